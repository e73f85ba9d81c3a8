//! A response body read from an open file a chunk at a time, so that serving a file of any
//! size holds one chunk of it in memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::connection::Busy;

/// The most read from the file for one frame.
const CHUNK_BYTES: usize = 64 << 10;

/// `len` bytes of `file`, from where it stands. A file that turns out shorter than that (it
/// was cut while being served) ends the body with an error, so the client sees a broken
/// transfer rather than a short one that looks complete. While it is being sent its
/// connection is busy, not idle (`limits.idle_timeout` does not cut a long download).
#[derive(Debug)]
pub struct FileBody {
    file: tokio::fs::File,
    left: u64,
    buf: Vec<u8>,
    busy: Option<Busy>,
}

impl FileBody {
    pub fn new(file: std::fs::File, len: u64, busy: Option<Busy>) -> Self {
        Self {
            file: tokio::fs::File::from_std(file),
            left: len,
            buf: Vec::new(),
            busy,
        }
    }

    fn end(&mut self) {
        self.left = 0;
        self.buf = Vec::new();
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
        let want = usize::try_from(this.left).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES));
        this.buf.resize(want, 0);
        let mut read = ReadBuf::new(&mut this.buf[..want]);
        if let Err(e) = ready!(Pin::new(&mut this.file).poll_read(cx, &mut read)) {
            this.end();
            return Poll::Ready(Some(Err(e)));
        }
        let n = read.filled().len();
        if n == 0 {
            this.end();
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file became shorter while it was served",
            ))));
        }
        let chunk = Bytes::copy_from_slice(read.filled());
        this.left -= n as u64;
        if this.left == 0 {
            this.end();
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
