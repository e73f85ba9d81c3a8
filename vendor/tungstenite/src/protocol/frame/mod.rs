//! Utilities to work with raw WebSocket frames.

pub mod coding;

#[allow(clippy::module_inception)]
mod frame;
mod mask;
mod utf8;

pub use self::{
    frame::{CloseFrame, Frame, FrameHeader},
    utf8::Utf8Bytes,
};

use crate::{
    error::{CapacityError, Error, ProtocolError, Result},
    protocol::frame::mask::apply_mask,
    Message,
};
use bytes::BytesMut;
use log::*;
use std::io::{self, Cursor, Error as IoError, ErrorKind as IoErrorKind, Read, Write};

/// Read buffer size used for `FrameSocket`.
const READ_BUF_LEN: usize = 128 * 1024;

/// A reader and writer for WebSocket frames.
#[derive(Debug)]
pub struct FrameSocket<Stream> {
    /// The underlying network stream.
    stream: Stream,
    /// Codec for reading/writing frames.
    codec: FrameCodec,
}

impl<Stream> FrameSocket<Stream> {
    /// Create a new frame socket.
    pub fn new(stream: Stream) -> Self {
        FrameSocket { stream, codec: FrameCodec::new(READ_BUF_LEN) }
    }

    /// Create a new frame socket from partially read data.
    pub fn from_partially_read(stream: Stream, part: Vec<u8>) -> Self {
        FrameSocket { stream, codec: FrameCodec::from_partially_read(part, READ_BUF_LEN) }
    }

    /// Extract a stream from the socket.
    pub fn into_inner(self) -> (Stream, BytesMut) {
        (self.stream, self.codec.in_buffer)
    }

    /// Returns a shared reference to the inner stream.
    pub fn get_ref(&self) -> &Stream {
        &self.stream
    }

    /// Returns a mutable reference to the inner stream.
    pub fn get_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

impl<Stream> FrameSocket<Stream>
where
    Stream: Read,
{
    /// Read a frame from stream.
    pub fn read(&mut self, max_size: Option<usize>) -> Result<Option<Frame>> {
        self.codec.read_frame(&mut self.stream, max_size, false, true)
    }
}

impl<Stream> FrameSocket<Stream>
where
    Stream: Write,
{
    /// Writes and immediately flushes a frame.
    /// Equivalent to calling [`write`](Self::write) then [`flush`](Self::flush).
    pub fn send(&mut self, frame: Frame) -> Result<()> {
        self.write(frame)?;
        self.flush()
    }

    /// Write a frame to stream.
    ///
    /// A subsequent call should be made to [`flush`](Self::flush) to flush writes.
    ///
    /// This function guarantees that the frame is queued unless [`Error::WriteBufferFull`]
    /// is returned.
    /// In order to handle WouldBlock or Incomplete, call [`flush`](Self::flush) afterwards.
    pub fn write(&mut self, frame: Frame) -> Result<()> {
        self.codec.buffer_frame(&mut self.stream, frame)
    }

    /// Flush writes.
    pub fn flush(&mut self) -> Result<()> {
        self.codec.write_out_buffer(&mut self.stream)?;
        Ok(self.stream.flush()?)
    }
}

/// A codec for WebSocket frames.
#[derive(Debug)]
pub(super) struct FrameCodec {
    /// Buffer to read data from the stream.
    in_buffer: BytesMut,
    in_buf_max_read: usize,
    /// Buffer to send packets to the network.
    out_buffer: Vec<u8>,
    /// How many bytes at the front of `out_buffer` were already written to the stream.
    /// (directus-relay patch 2: the rest is written from here, not moved to the front
    /// after every partial write.)
    out_buffer_written: usize,
    /// Capacity limit for `out_buffer`.
    max_out_buffer_len: usize,
    /// Buffer target length to reach before writing to the stream
    /// on calls to `buffer_frame`.
    ///
    /// Setting this to non-zero will buffer small writes from hitting
    /// the stream.
    out_buffer_write_len: usize,
    /// Header and remaining size of the incoming packet being processed.
    header: Option<(FrameHeader, u64)>,
}

impl FrameCodec {
    /// Create a new frame codec.
    pub(super) fn new(in_buf_len: usize) -> Self {
        Self {
            in_buffer: BytesMut::with_capacity(in_buf_len),
            in_buf_max_read: in_buf_len.max(FrameHeader::MAX_SIZE),
            out_buffer: <_>::default(),
            out_buffer_written: 0,
            max_out_buffer_len: usize::MAX,
            out_buffer_write_len: 0,
            header: None,
        }
    }

    /// Create a new frame codec from partially read data.
    pub(super) fn from_partially_read(part: Vec<u8>, min_in_buf_len: usize) -> Self {
        let mut in_buffer = BytesMut::from_iter(part);
        in_buffer.reserve(min_in_buf_len.saturating_sub(in_buffer.len()));
        Self {
            in_buffer,
            in_buf_max_read: min_in_buf_len.max(FrameHeader::MAX_SIZE),
            out_buffer: <_>::default(),
            out_buffer_written: 0,
            max_out_buffer_len: usize::MAX,
            out_buffer_write_len: 0,
            header: None,
        }
    }

    /// Sets a maximum size for the out buffer.
    pub(super) fn set_max_out_buffer_len(&mut self, max: usize) {
        self.max_out_buffer_len = max;
    }

    /// Sets [`Self::buffer_frame`] buffer target length to reach before
    /// writing to the stream.
    pub(super) fn set_out_buffer_write_len(&mut self, len: usize) {
        self.out_buffer_write_len = len;
    }

    /// Read a frame from the provided stream.
    pub(super) fn read_frame(
        &mut self,
        stream: &mut impl Read,
        max_size: Option<usize>,
        unmask: bool,
        accept_unmasked: bool,
    ) -> Result<Option<Frame>> {
        let max_size = max_size.unwrap_or_else(usize::max_value);

        let mut payload = loop {
            if self.header.is_none() {
                let mut cursor = Cursor::new(&mut self.in_buffer);
                self.header = FrameHeader::parse(&mut cursor)?;
                let advanced = cursor.position();
                bytes::Buf::advance(&mut self.in_buffer, advanced as _);

                if let Some((_, len)) = &self.header {
                    // Enforce frame size limit early. Compare in u64 before
                    // narrowing so a length above usize::MAX can't wrap on
                    // 32-bit/wasm32 targets and slip past the check.
                    if *len > max_size as u64 {
                        return Err(Error::Capacity(CapacityError::MessageTooLong {
                            size: *len as usize,
                            max_size,
                        }));
                    }
                    let len = *len as usize;

                    // Reserve full message length only once, even for multiple
                    // loops or if WouldBlock errors cause multiple fn calls.
                    self.in_buffer.reserve(len);
                } else if self.in_buffer.capacity() == 0 {
                    // directus-relay patch 3: the buffer was given back while the connection
                    // was idle; read as much at once as a new connection does.
                    self.in_buffer.reserve(self.in_buf_max_read);
                } else {
                    self.in_buffer.reserve(FrameHeader::MAX_SIZE);
                }
            }

            if let Some((_, len)) = &self.header {
                let len = *len as usize;
                if len <= self.in_buffer.len() {
                    break self.in_buffer.split_to(len);
                }
            }

            // Not enough data in buffer.
            if self.read_in(stream)? == 0 {
                trace!("no frame received");
                return Ok(None);
            }
        };

        let (mut header, length) = self.header.take().expect("Bug: no frame header");
        debug_assert_eq!(payload.len() as u64, length);

        if unmask {
            if let Some(mask) = header.mask.take() {
                // A server MUST remove masking for data frames received from a client
                // as described in Section 5.3. (RFC 6455)
                apply_mask(&mut payload, mask);
            } else if !accept_unmasked {
                // The server MUST close the connection upon receiving a
                // frame that is not masked. (RFC 6455)
                // The only exception here is if the user explicitly accepts given
                // stream by setting WebSocketConfig.accept_unmasked_frames to true
                return Err(Error::Protocol(ProtocolError::UnmaskedFrameFromClient));
            }
        }

        let frame = Frame::from_payload(header, payload.freeze());
        trace!("received frame {frame}");
        Ok(Some(frame))
    }

    /// Read into available `in_buffer` capacity.
    fn read_in(&mut self, stream: &mut impl Read) -> io::Result<usize> {
        let len = self.in_buffer.len();
        debug_assert!(self.in_buffer.capacity() > len);
        self.in_buffer.resize(self.in_buffer.capacity().min(len + self.in_buf_max_read), 0);
        let size = stream.read(&mut self.in_buffer[len..]);
        self.in_buffer.truncate(len + size.as_ref().copied().unwrap_or(0));
        // directus-relay patch 3: a connection with nothing more to read and nothing buffered
        // gives its read buffer back instead of keeping it while idle (a server with thousands
        // of mostly idle connections keeps one each); the next read allocates it again.
        if self.in_buffer.is_empty()
            && self.header.is_none()
            && matches!(&size, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        {
            self.in_buffer = BytesMut::new();
        }
        size
    }

    /// Writes a frame into the `out_buffer`.
    /// If the out buffer size is over the `out_buffer_write_len` will also write
    /// the out buffer into the provided `stream`.
    ///
    /// To ensure buffered frames are written call [`Self::write_out_buffer`].
    ///
    /// May write to the stream, will **not** flush.
    pub(super) fn buffer_frame<Stream>(&mut self, stream: &mut Stream, frame: Frame) -> Result<()>
    where
        Stream: Write,
    {
        if frame.len() + self.out_buffer_pending() > self.max_out_buffer_len {
            return Err(Error::WriteBufferFull(Message::Frame(frame).into()));
        }

        trace!("writing frame {frame}");

        // Move the unwritten rest to the front only when what was written is at least as long
        // as the rest, so that each byte is moved at most once on average.
        if self.out_buffer_written > 0 && self.out_buffer_written >= self.out_buffer_pending() {
            self.out_buffer.drain(0..self.out_buffer_written);
            self.out_buffer_written = 0;
        }
        self.out_buffer.reserve(frame.len());
        frame.format_into_buf(&mut self.out_buffer).expect("Bug: can't write to vector");

        if self.out_buffer_pending() > self.out_buffer_write_len {
            self.write_out_buffer(stream)
        } else {
            Ok(())
        }
    }

    /// The bytes of `out_buffer` not yet written to the stream.
    fn out_buffer_pending(&self) -> usize {
        self.out_buffer.len() - self.out_buffer_written
    }

    /// Writes the out_buffer to the provided stream.
    ///
    /// Does **not** flush.
    pub(super) fn write_out_buffer<Stream>(&mut self, stream: &mut Stream) -> Result<()>
    where
        Stream: Write,
    {
        while self.out_buffer_pending() > 0 {
            let len = stream.write(&self.out_buffer[self.out_buffer_written..])?;
            if len == 0 {
                // This is the same as "Connection reset by peer"
                return Err(IoError::new(
                    IoErrorKind::ConnectionReset,
                    "Connection reset while sending",
                )
                .into());
            }
            self.out_buffer_written += len;
        }
        self.out_buffer_written = 0;
        // directus-relay patch 1: once everything is written the buffer is given back, instead
        // of being kept at its largest size for the life of the connection (a large message, or
        // a peer that did not read for a while, made it grow). The next frames allocate one of
        // their size: one allocation per batch written, against a write to the stream each.
        self.out_buffer = Vec::new();

        Ok(())
    }
}


#[cfg(test)]
mod tests {

    use crate::error::{CapacityError, Error};

    use super::{Frame, FrameCodec, FrameSocket};
    use crate::protocol::frame::coding::{Data, OpCode};

    use std::io::Cursor;

    #[test]
    fn read_frames() {
        env_logger::init();

        let raw = Cursor::new(vec![
            0x82, 0x07, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x82, 0x03, 0x03, 0x02, 0x01,
            0x99,
        ]);
        let mut sock = FrameSocket::new(raw);

        assert_eq!(
            sock.read(None).unwrap().unwrap().into_payload(),
            &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07][..]
        );
        assert_eq!(sock.read(None).unwrap().unwrap().into_payload(), &[0x03, 0x02, 0x01][..]);
        assert!(sock.read(None).unwrap().is_none());

        let (_, rest) = sock.into_inner();
        assert_eq!(rest, vec![0x99]);
    }

    #[test]
    fn from_partially_read() {
        let raw = Cursor::new(vec![0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
        let mut sock = FrameSocket::from_partially_read(raw, vec![0x82, 0x07, 0x01]);
        assert_eq!(
            sock.read(None).unwrap().unwrap().into_payload(),
            &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07][..]
        );
    }

    #[test]
    fn write_frames() {
        let mut sock = FrameSocket::new(Vec::new());

        let frame = Frame::ping(vec![0x04, 0x05]);
        sock.send(frame).unwrap();

        let frame = Frame::pong(vec![0x01]);
        sock.send(frame).unwrap();

        let (buf, _) = sock.into_inner();
        assert_eq!(buf, vec![0x89, 0x02, 0x04, 0x05, 0x8a, 0x01, 0x01]);
    }

    #[test]
    fn parse_overflow() {
        let raw = Cursor::new(vec![
            0x83, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
        ]);
        let mut sock = FrameSocket::new(raw);
        let _ = sock.read(None); // should not crash
    }

    #[test]
    fn size_limit_hit() {
        let raw = Cursor::new(vec![0x82, 0x07, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
        let mut sock = FrameSocket::new(raw);
        assert!(matches!(
            sock.read(Some(5)),
            Err(Error::Capacity(CapacityError::MessageTooLong { size: 7, max_size: 5 }))
        ));
    }

    #[test]
    #[cfg(target_pointer_width = "32")]
    fn length_above_usize_max_rejected() {
        // 64-bit payload length 0x1_0000_0005 does not fit a 32-bit usize; it
        // must be rejected rather than wrapping to 5 when narrowed.
        let raw = Cursor::new(vec![0x82, 0x7f, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05]);
        let mut sock = FrameSocket::new(raw);
        assert!(matches!(
            sock.read(None),
            Err(Error::Capacity(CapacityError::MessageTooLong { size: 5, max_size: usize::MAX }))
        ));
    }

    /// A peer that reads slowly: takes at most `per_write` bytes a write and `per_round` bytes
    /// a round, then says `WouldBlock` until the next round.
    struct SlowPeer {
        received: Vec<u8>,
        per_write: usize,
        per_round: usize,
        left_this_round: usize,
    }

    impl SlowPeer {
        fn new(per_write: usize, per_round: usize) -> Self {
            Self { received: Vec::new(), per_write, per_round, left_this_round: per_round }
        }

        fn next_round(&mut self) {
            self.left_this_round = self.per_round;
        }
    }

    impl std::io::Write for SlowPeer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.per_write).min(self.left_this_round);
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.left_this_round -= n;
            self.received.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn binary(len: usize, seed: u8) -> Frame {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        Frame::message(data, OpCode::Data(Data::Binary), true)
    }

    fn formatted(frame: Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.format_into_buf(&mut out).unwrap();
        out
    }

    /// Writes out what is buffered, one round of the peer at a time, until all is written.
    fn write_all_rounds(codec: &mut FrameCodec, peer: &mut SlowPeer) {
        loop {
            match codec.write_out_buffer(peer) {
                Ok(()) => return,
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => peer.next_round(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    // directus-relay patch 1
    #[test]
    fn out_buffer_of_a_large_frame_is_given_back_once_written() {
        let write_buffer_size = 128 * 1024;
        let mut codec = FrameCodec::new(4096);
        codec.set_out_buffer_write_len(write_buffer_size);
        let mut peer = SlowPeer::new(16 * 1024, 64 * 1024);

        let large = binary(4 * 1024 * 1024, 1);
        let expected = formatted(large.clone());
        match codec.buffer_frame(&mut peer, large) {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a slow peer cannot take 4 MiB at once: {other:?}"),
        }
        assert!(codec.out_buffer.capacity() >= 4 * 1024 * 1024);
        peer.next_round();
        write_all_rounds(&mut codec, &mut peer);

        assert_eq!(peer.received, expected);
        assert!(codec.out_buffer.is_empty());
        assert!(
            codec.out_buffer.capacity() <= write_buffer_size,
            "kept {} bytes after the frame was written",
            codec.out_buffer.capacity()
        );
    }

    // directus-relay patch 1
    #[test]
    fn out_buffer_of_small_frames_is_given_back_once_written() {
        let mut codec = FrameCodec::new(4096);
        codec.set_out_buffer_write_len(128 * 1024);
        let mut peer = SlowPeer::new(usize::MAX, usize::MAX);
        let mut expected = Vec::new();
        for seed in 0..10 {
            expected.extend(formatted(binary(1000, seed)));
            codec.buffer_frame(&mut peer, binary(1000, seed)).unwrap();
        }
        assert!(codec.out_buffer.capacity() >= 10 * 1000, "batched until written");
        codec.write_out_buffer(&mut peer).unwrap();
        assert_eq!(peer.received, expected);
        assert_eq!(codec.out_buffer.capacity(), 0, "nothing kept once written");
        // And the next frame goes out as before.
        codec.buffer_frame(&mut peer, binary(10, 99)).unwrap();
        codec.write_out_buffer(&mut peer).unwrap();
        expected.extend(formatted(binary(10, 99)));
        assert_eq!(peer.received, expected);
    }

    /// A stream that has some chunks to read, then would block.
    struct Chunks {
        chunks: std::collections::VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl std::io::Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let Some(chunk) = self.chunks.front_mut() else {
                return Err(std::io::ErrorKind::WouldBlock.into());
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            Ok(n)
        }
    }

    fn masked_text(payload: &[u8]) -> Vec<u8> {
        let mut frame = Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true);
        frame.set_random_mask();
        formatted(frame)
    }

    // directus-relay patch 3
    #[test]
    fn an_idle_connection_gives_its_read_buffer_back() {
        let mut codec = FrameCodec::new(512);
        let mut stream = Chunks { chunks: [masked_text(b"40{}")].into(), reads: 0 };
        let frame = codec.read_frame(&mut stream, None, true, false).unwrap().unwrap();
        assert_eq!(frame.payload(), b"40{}");
        let read = codec.read_frame(&mut stream, None, true, false);
        assert!(matches!(read, Err(Error::Io(ref e)) if e.kind() == std::io::ErrorKind::WouldBlock));
        assert_eq!(codec.in_buffer.capacity(), 0, "nothing to read: no buffer kept");

        // The next message is read whole in one read, as by a new connection, and a message
        // split across reads still arrives whole.
        let message = masked_text(&[b'x'; 300]);
        stream.chunks.push_back(message.clone());
        stream.reads = 0;
        let frame = codec.read_frame(&mut stream, None, true, false).unwrap().unwrap();
        assert_eq!(frame.payload(), &[b'x'; 300][..]);
        assert_eq!(stream.reads, 1);
        let (first, rest) = message.split_at(5);
        stream.chunks.push_back(first.to_vec());
        let read = codec.read_frame(&mut stream, None, true, false);
        assert!(matches!(read, Err(Error::Io(ref e)) if e.kind() == std::io::ErrorKind::WouldBlock));
        assert!(codec.in_buffer.capacity() > 0, "a partial frame keeps the buffer");
        stream.chunks.push_back(rest.to_vec());
        let frame = codec.read_frame(&mut stream, None, true, false).unwrap().unwrap();
        assert_eq!(frame.payload(), &[b'x'; 300][..]);
    }

    // directus-relay patch 2
    #[test]
    fn frames_queued_behind_a_partial_write_arrive_whole_and_in_order() {
        let mut codec = FrameCodec::new(4096);
        codec.set_out_buffer_write_len(8 * 1024);
        let mut peer = SlowPeer::new(3 * 1024 + 7, 20 * 1024 + 3);
        let mut expected = Vec::new();
        for (seed, len) in [100_000, 10, 5_000, 300_000, 1, 70_000, 20].into_iter().enumerate() {
            let frame = binary(len, seed as u8);
            expected.extend(formatted(frame.clone()));
            match codec.buffer_frame(&mut peer, frame) {
                Ok(()) => {}
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            // Part of what is buffered goes out between frames, as on a socket that drains.
            peer.next_round();
            let _ = codec.write_out_buffer(&mut peer);
            assert!(codec.out_buffer_written <= codec.out_buffer.len());
        }
        peer.next_round();
        write_all_rounds(&mut codec, &mut peer);
        assert_eq!(peer.received.len(), expected.len());
        assert!(peer.received == expected, "the bytes on the wire differ from the frames sent");
        assert_eq!(codec.out_buffer_written, 0);
    }

    // directus-relay patch 2
    #[test]
    fn write_buffer_limit_counts_only_unwritten_bytes() {
        let mut codec = FrameCodec::new(4096);
        codec.set_out_buffer_write_len(0);
        codec.set_max_out_buffer_len(10_000);
        let mut peer = SlowPeer::new(usize::MAX, 6_000);
        // 8,000 bytes buffered, 6,000 of them written: 2,000 and the next frame fit the limit.
        let _ = codec.buffer_frame(&mut peer, binary(7_990, 0));
        assert_eq!(codec.out_buffer_written, 6_000);
        peer.left_this_round = 0;
        assert!(codec.buffer_frame(&mut peer, binary(7_000, 1)).is_err_and(|e| matches!(e, Error::Io(_))));
        assert!(matches!(
            codec.buffer_frame(&mut peer, binary(5_000, 2)),
            Err(Error::WriteBufferFull(_))
        ));
    }
}
