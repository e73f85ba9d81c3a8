//! A response body read from an open file a chunk at a time, so that serving a file of any
//! size holds one chunk of it in memory.

use std::any::Any;
use std::fs::File;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::connection::Busy;

/// What a job on the blocking pool returns, its type erased: see [`blocking`].
pub type Done = Box<dyn Any + Send>;

/// Runs `job` on the blocking pool. Every blocking job of the kiosk app goes through this one
/// instantiation of `spawn_blocking`: each distinct closure type would cost the binary the
/// code of a task of its own.
pub fn blocking<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> JoinHandle<Done> {
    let job: Box<dyn FnOnce() -> Done + Send> = Box::new(move || Box::new(job()) as Done);
    tokio::task::spawn_blocking(job)
}

/// What a [`blocking`] job gave, as its own type.
pub fn taken<T: 'static>(done: Result<Done, tokio::task::JoinError>) -> io::Result<T> {
    done.map_err(io::Error::other)?
        .downcast::<T>()
        .map(|t| *t)
        .map_err(|_| io::Error::other("a blocking job returned another type (a bug)"))
}

/// One chunk read: the file back, and the bytes.
type Chunk = (File, io::Result<Vec<u8>>);

/// The most read from the file for one frame.
const CHUNK_BYTES: u64 = 64 << 10;

/// `len` bytes of `file`, from where it stands, each chunk read on the blocking pool. A file
/// that turns out shorter than that (it was cut while being served) ends the body with an
/// error, so the client sees a broken transfer rather than a short one that looks complete.
/// While it is being sent its connection is busy, not idle (`limits.idle_timeout` does not
/// cut a long download).
#[derive(Debug)]
pub struct FileBody {
    /// The file between reads; `None` while a read has it.
    file: Option<File>,
    reading: Option<JoinHandle<Done>>,
    left: u64,
    busy: Option<Busy>,
}

impl FileBody {
    pub fn new(file: File, len: u64, busy: Option<Busy>) -> Self {
        Self {
            file: Some(file),
            reading: None,
            left: len,
            busy,
        }
    }

    fn end(&mut self) {
        self.left = 0;
        self.file = None;
        self.busy = None;
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        if this.reading.is_none() {
            let Some(file) = this.file.take() else {
                return Poll::Ready(None);
            };
            let want = this.left.min(CHUNK_BYTES);
            this.reading = Some(blocking(move || -> Chunk {
                let mut chunk = Vec::new();
                let mut file = file;
                let read = (&mut file)
                    .take(want)
                    .read_to_end(&mut chunk)
                    .map(|_| chunk);
                (file, read)
            }));
        }
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let done = taken::<Chunk>(ready!(Pin::new(reading).poll(cx)));
        this.reading = None;
        let chunk = match done {
            Ok((file, Ok(chunk))) if !chunk.is_empty() => {
                this.file = Some(file);
                chunk
            }
            Ok((_, Ok(_))) => {
                this.end();
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was served",
                ))));
            }
            Ok((_, Err(e))) => {
                this.end();
                return Poll::Ready(Some(Err(e)));
            }
            Err(e) => {
                this.end();
                return Poll::Ready(Some(Err(e)));
            }
        };
        this.left = this.left.saturating_sub(chunk.len() as u64);
        if this.left == 0 {
            this.end();
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
