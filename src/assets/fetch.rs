//! Downloads from Directus: `/assets/<id>` over the relay's TLS client, and the write of a
//! download into the cache — a temporary file, the size checked against what Directus said
//! (`Content-Length`, and `filesize` from `/files/<id>` for an original), fsync, rename. A
//! download that stops half-way, or whose [`CacheWriter`] is dropped, leaves nothing behind.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::Inner;
use super::store::{Meta, fnv64, variant_name};
use crate::config::{DirectusConfig, Secret};
use crate::upstream::directus::{self, Directus};

/// Why a file could not be fetched, worded for the operator (never with a token in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("Directus cannot be reached: {0}")]
    Unreachable(String),
    #[error("Directus has no such file (404)")]
    NotFound,
    #[error("Directus answered {0}")]
    Status(u16),
    #[error("the file does not fit assets.max_bytes next to the files items reference")]
    NoRoom,
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("cannot write the files cache: {0}")]
    Disk(String),
    #[error("the download stopped after {got} of {expected} bytes")]
    Incomplete { expected: u64, got: u64 },
    #[error("the download was cut: {0}")]
    Cut(String),
}

impl FetchError {
    fn disk(error: std::io::Error) -> FetchError {
        if error.kind() == ErrorKind::StorageFull || error.raw_os_error() == Some(28) {
            FetchError::DiskFull(error.to_string())
        } else {
            FetchError::Disk(error.to_string())
        }
    }
}

/// Directus as the files cache reaches it: its own HTTP client (no overall timeout, as a large
/// video takes long; a read timeout instead), the relay's credentials through [`Directus`].
pub struct Upstream {
    http: reqwest::Client,
    base: Url,
    pub(super) directus: tokio::sync::Mutex<Directus>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(config: &DirectusConfig) -> Result<Upstream, String> {
        let http = directus::http_client(config, |b| b.read_timeout(config.request_timeout))?;
        Ok(Upstream {
            http,
            base: config.url.clone(),
            directus: tokio::sync::Mutex::new(Directus::new(config)?),
        })
    }

    async fn token(&self) -> Result<Secret, FetchError> {
        self.directus
            .lock()
            .await
            .access_token()
            .await
            .map_err(|e| FetchError::Unreachable(e.to_string()))
    }

    fn url(&self, path: &str, query: &str) -> Url {
        let mut url = self.base.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
        url.set_query((!query.is_empty()).then_some(query));
        url
    }

    /// `GET /assets/<file>?<params>`, with `range` when given; the answer's headers are in,
    /// its body not read yet.
    pub async fn open(
        &self,
        file: &str,
        params: &str,
        range: Option<&str>,
    ) -> Result<reqwest::Response, FetchError> {
        let token = self.token().await?;
        let mut request = self
            .http
            .get(self.url(&format!("/assets/{file}"), params))
            .bearer_auth(token.expose());
        if let Some(range) = range {
            request = request.header(reqwest::header::RANGE, range);
        }
        let response = request.send().await.map_err(|e| {
            FetchError::Unreachable(if e.is_timeout() {
                "timed out".into()
            } else if e.is_connect() {
                "connection refused or failed".into()
            } else {
                "the request failed".into()
            })
        })?;
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Err(FetchError::NotFound),
            s if s.is_server_error() => Err(FetchError::Unreachable(format!("answered {s}"))),
            s => Err(FetchError::Status(s.as_u16())),
        }
    }

    /// The size Directus keeps for a file (`filesize`), when it tells.
    pub async fn filesize(&self, file: &str) -> Option<u64> {
        let path = format!("/files/{file}?fields=filesize");
        let answer = self.directus.lock().await.get(&path, "").await.ok()?;
        match &answer["data"]["filesize"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// What Directus said about a download before its body.
#[derive(Debug, Clone)]
pub struct Head {
    pub content_type: String,
    pub last_modified: String,
    /// `Content-Length` (and `filesize`, which must agree).
    pub expected: Option<u64>,
}

impl Head {
    pub fn of(response: &reqwest::Response) -> Head {
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Head {
            content_type: header(reqwest::header::CONTENT_TYPE)
                .unwrap_or_else(|| "application/octet-stream".into()),
            last_modified: header(reqwest::header::LAST_MODIFIED)
                .unwrap_or_else(|| httpdate::fmt_http_date(std::time::SystemTime::now())),
            expected: response.content_length(),
        }
    }
}

/// One download being written into the cache. Dropped before [`CacheWriter::finish`], it
/// removes its temporary file and gives its room back.
pub struct CacheWriter {
    inner: Arc<Inner>,
    file: String,
    params: String,
    name: String,
    temp: PathBuf,
    out: Option<tokio::fs::File>,
    reserved: u64,
    written: u64,
    hash: u64,
    done: bool,
    /// The size Directus announced, taken from the budget at the first chunk.
    expected: Option<u64>,
}

impl std::fmt::Debug for CacheWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheWriter")
            .field("name", &self.name)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl CacheWriter {
    /// Starts writing `file` (`params`: the variant) into the cache; `None` when the same
    /// variant is being downloaded already.
    pub async fn begin(
        inner: &Arc<Inner>,
        file: &str,
        params: &str,
        claimed: bool,
        expected: Option<u64>,
    ) -> Result<Option<CacheWriter>, FetchError> {
        let name = variant_name(file, params);
        let temp = {
            let mut store = inner.store();
            if !claimed && !store.start(&name) {
                return Ok(None);
            }
            store.temp_path(&name)
        };
        let mut writer = CacheWriter {
            inner: inner.clone(),
            file: file.to_owned(),
            params: params.to_owned(),
            name,
            temp,
            out: None,
            reserved: 0,
            written: 0,
            hash: 0xcbf2_9ce4_8422_2325,
            done: false,
            expected,
        };
        let out = tokio::fs::File::create(&writer.temp)
            .await
            .map_err(FetchError::disk)?;
        writer.out = Some(out);
        Ok(Some(writer))
    }

    /// Appends a chunk, taking budget for it first.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        let need = self.written + chunk.len() as u64;
        if need > self.reserved {
            // The whole size at once when Directus said it, else what this chunk needs.
            let more = match self.expected {
                Some(expected) if expected >= need => expected - self.reserved,
                _ => need - self.reserved,
            };
            self.inner
                .store()
                .grow(&self.file, more, &self.inner.figures)
                .map_err(|_| FetchError::NoRoom)?;
            self.reserved += more;
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| FetchError::Disk("closed".into()))?;
        out.write_all(chunk).await.map_err(FetchError::disk)?;
        self.hash = fnv64(self.hash, chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Checks the size, fsyncs, renames the bytes and then the meta into place, and counts the
    /// variant in the cache.
    pub async fn finish(mut self, head: &Head) -> Result<Meta, FetchError> {
        if let Some(expected) = head.expected
            && expected != self.written
        {
            return Err(FetchError::Incomplete {
                expected,
                got: self.written,
            });
        }
        let mut out = self
            .out
            .take()
            .ok_or_else(|| FetchError::Disk("closed".into()))?;
        out.flush().await.map_err(FetchError::disk)?;
        out.sync_all().await.map_err(FetchError::disk)?;
        drop(out);
        let meta = Meta {
            file: self.file.clone(),
            params: self.params.clone(),
            content_type: head.content_type.clone(),
            size: self.written,
            checksum: format!("{:016x}", self.hash),
            last_modified: head.last_modified.clone(),
        };
        let (data, meta_path, dir) = {
            let store = self.inner.store();
            (
                store.data_path(&self.name),
                store.meta_path(&self.name),
                store.files_dir(),
            )
        };
        let meta_temp = self.temp.with_extension("json");
        let json = serde_json::to_vec(&meta).map_err(|e| FetchError::Disk(e.to_string()))?;
        let temp = self.temp.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&meta_temp)?;
            std::io::Write::write_all(&mut f, &json)?;
            f.sync_all()?;
            std::fs::rename(&temp, &data)?;
            std::fs::rename(&meta_temp, &meta_path)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| FetchError::Disk(e.to_string()))?
        .map_err(FetchError::disk)?;
        self.done = true;
        let mut store = self.inner.store();
        store.insert(meta.clone(), self.reserved);
        store.publish(&self.inner.figures);
        drop(store);
        self.inner.figures.downloads.inc();
        self.inner.cached.send_modify(|n| *n += 1);
        Ok(meta)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        drop(self.out.take());
        std::fs::remove_file(&self.temp).ok();
        std::fs::remove_file(self.temp.with_extension("json")).ok();
        self.inner.store().abandon(&self.name, self.reserved);
    }
}

/// Downloads a variant into the cache (the prefetcher's way): claimed already by the caller,
/// and given up whatever happens.
pub async fn download(inner: &Arc<Inner>, file: &str, params: &str) -> Result<Meta, FetchError> {
    let result = download_claimed(inner, file, params).await;
    if result.is_err() {
        inner.store().abandon(&variant_name(file, params), 0);
    }
    result
}

async fn download_claimed(
    inner: &Arc<Inner>,
    file: &str,
    params: &str,
) -> Result<Meta, FetchError> {
    let mut response = inner.upstream.open(file, params, None).await?;
    let mut head = Head::of(&response);
    if params.is_empty()
        && let Some(size) = inner.upstream.filesize(file).await
    {
        match head.expected {
            Some(length) if length != size => {
                return Err(FetchError::Incomplete {
                    expected: size,
                    got: length,
                });
            }
            _ => head.expected = Some(size),
        }
    }
    let Some(mut writer) = CacheWriter::begin(inner, file, params, true, head.expected).await?
    else {
        return Err(FetchError::Cut("already being downloaded".into()));
    };
    loop {
        match tokio::time::timeout(STALL, response.chunk()).await {
            Ok(Ok(Some(chunk))) => writer.write(&chunk).await?,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(FetchError::Cut(e.to_string())),
            Err(_) => return Err(FetchError::Cut("no data for a while".into())),
        }
    }
    writer.finish(&head).await
}

/// A download that sends nothing for this long is given up (and retried).
pub const STALL: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_write_errors() {
        let full = FetchError::disk(std::io::Error::from_raw_os_error(28));
        assert!(matches!(full, FetchError::DiskFull(_)), "{full:?}");
        let denied = FetchError::disk(std::io::Error::from(ErrorKind::PermissionDenied));
        assert!(matches!(denied, FetchError::Disk(_)), "{denied:?}");
    }
}
