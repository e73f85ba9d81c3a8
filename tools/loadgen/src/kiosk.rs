//! Kiosks: a WebSocket per kiosk with the Socket.IO handshake, then either a reader that
//! records every event (one that lags stops reading for a while when the load begins, then
//! catches up) or a stalled kiosk that is held without ever being read again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::args::Options;
use crate::engineio::{self, Packet};
use crate::stats::{Counter, Histogram, Seen};

/// Longest wait for a handshake, from TCP connect to the connect (or subscribe) answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A stalled kiosk being drained at the end counts as still open after this long without data.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// How long the kiosk that sent an oversized message waits to be cut off.
pub const OVERSIZE_WAIT: Duration = Duration::from_secs(5);
/// The ack id of the subscribe request.
const SUBSCRIBE_ACK: u64 = 1;

pub type Ws = WebSocketStream<TcpStream>;

/// Small buffers: a kiosk holds a few kilobytes however large the events are.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// What every reading kiosk adds to.
#[derive(Debug)]
pub struct Tally {
    /// When the run started; `sent_at_us` counts from here.
    pub start: Instant,
    /// From the moment an event was sent to its first delivery.
    pub latency: Histogram,
    /// From the moment the schedule said to send it: includes the wait of a poster held up by a
    /// slow webhook answer, which `latency` leaves out (coordinated omission).
    pub latency_scheduled: Histogram,
    /// First deliveries of a posted event, over all reading kiosks.
    pub delivered: Counter,
    pub duplicates: Counter,
    /// `data.*` events without the loadgen's `n` and `sent_at_us`.
    pub foreign: Counter,
    pub bytes: Counter,
    /// Reading kiosks whose connection the relay ended (close, `41`, EOF, error).
    pub readers_closed: Counter,
    /// Reading kiosks still connected at the end, and the events they got: what the relay
    /// lost without cutting anyone off.
    pub readers_open: Counter,
    pub delivered_open: Counter,
}

impl Tally {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            latency: Histogram::default(),
            latency_scheduled: Histogram::default(),
            delivered: Counter::default(),
            duplicates: Counter::default(),
            foreign: Counter::default(),
            bytes: Counter::default(),
            readers_closed: Counter::default(),
            readers_open: Counter::default(),
            delivered_open: Counter::default(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// Why a kiosk did not get connected.
#[derive(Debug)]
pub enum ConnectFailure {
    /// The relay answered `44`: for example it is full or the token is wrong.
    Refused(String),
    Failed(String),
}

/// Opens the WebSocket, does the Engine.IO and Socket.IO handshakes and, with `--subscribe`,
/// subscribes to the collection and waits for the ack.
pub async fn connect(options: &Options) -> Result<Ws, ConnectFailure> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(options))
        .await
        .unwrap_or_else(|_| Err(ConnectFailure::Failed("handshake timed out".into())))
}

async fn handshake(options: &Options) -> Result<Ws, ConnectFailure> {
    let failed = |e: &dyn std::fmt::Display| ConnectFailure::Failed(e.to_string());
    let stream = TcpStream::connect(&options.addr)
        .await
        .map_err(|e| failed(&e))?;
    stream.set_nodelay(true).map_err(|e| failed(&e))?;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", options.addr);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(|e| failed(&e))?;
    let collections = [options.collection.clone()];
    let hint = options.subscribe.then_some(&collections[..]);
    let mut connect_sent = false;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Err(ConnectFailure::Failed(format!("closed: {frame:?}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(failed(&e)),
            None => return Err(ConnectFailure::Failed("closed".into())),
        };
        let reply = match engineio::parse(&text) {
            Packet::Open(_) if !connect_sent => {
                connect_sent = true;
                engineio::connect(options.token.as_deref(), hint)
            }
            Packet::Ping => engineio::PONG.to_owned(),
            Packet::Connect(_) if !options.subscribe => return Ok(ws),
            Packet::Connect(_) => engineio::event(
                Some(SUBSCRIBE_ACK),
                "subscribe",
                &json!({ "collections": collections }),
            ),
            Packet::Ack { id, data } if id == SUBSCRIBE_ACK => {
                let answer: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                if answer[0]["ok"] == true {
                    return Ok(ws);
                }
                return Err(ConnectFailure::Refused(format!("subscribe: {data}")));
            }
            Packet::ConnectError(data) => return Err(ConnectFailure::Refused(data.to_owned())),
            Packet::Close | Packet::Disconnect => {
                return Err(ConnectFailure::Failed(
                    "disconnected during handshake".into(),
                ));
            }
            _ => continue,
        };
        ws.send(Message::text(reply))
            .await
            .map_err(|e| failed(&e))?;
    }
}

/// When a lagging kiosk stops reading: `None` until the load begins, then the moment it reads
/// again.
pub type Lag = watch::Receiver<Option<Instant>>;

/// What a reading kiosk does next.
enum Next {
    Message(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Stop,
    /// Stop reading until then (a lagging kiosk, once).
    Lag(Instant),
}

/// Reads until `stop` turns true or the relay ends the connection: answers pings and records
/// every posted event's latency, duplicates included. With `lag`, stops reading once when the
/// load begins, until the moment it names, then reads on and catches up.
pub async fn read(
    mut ws: Ws,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
    mut lag: Option<Lag>,
) {
    let mut seen = Seen::default();
    let mut delivered = 0;
    loop {
        let next = tokio::select! {
            message = ws.next() => Next::Message(message),
            _ = stop.wait_for(|s| *s) => Next::Stop,
            until = lag_begins(&mut lag) => Next::Lag(until),
        };
        let message = match next {
            Next::Message(message) => message,
            Next::Stop => {
                tally.readers_open.inc();
                tally.delivered_open.add(delivered);
                return;
            }
            Next::Lag(until) => {
                lag = None;
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => continue,
                    _ = stop.wait_for(|s| *s) => {
                        tally.readers_open.inc();
                        tally.delivered_open.add(delivered);
                        return;
                    }
                }
            }
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        tally.bytes.add(text.len() as u64);
        match engineio::parse(&text) {
            Packet::Ping if ws.send(Message::text(engineio::PONG)).await.is_err() => break,
            Packet::Event { name, args, .. } if name.starts_with("data.") => {
                delivered += u64::from(record(&tally, &mut seen, args));
            }
            Packet::Disconnect | Packet::Close => break,
            _ => {}
        }
    }
    if !*stop.borrow() {
        tally.readers_closed.inc();
    }
}

/// The moment a lagging kiosk reads again, once the load has begun; never for the others.
async fn lag_begins(lag: &mut Option<Lag>) -> Instant {
    if let Some(lag) = lag
        && let Ok(until) = lag.wait_for(Option::is_some).await
        && let Some(until) = *until
    {
        return until;
    }
    std::future::pending().await
}

/// Records one `data.*` event; true when it is a first delivery of a posted event.
fn record(tally: &Tally, seen: &mut Seen, args: &str) -> bool {
    let (Some(n), Some(sent)) = (
        engineio::find_u64(args, "n"),
        engineio::find_u64(args, "sent_at_us"),
    ) else {
        tally.foreign.inc();
        return false;
    };
    if seen.insert(n) {
        tally.delivered.inc();
        let now = tally.now_us();
        tally.latency.record(now.saturating_sub(sent));
        if let Some(planned) = engineio::find_u64(args, "planned_us") {
            tally.latency_scheduled.record(now.saturating_sub(planned));
        }
        true
    } else {
        tally.duplicates.inc();
        false
    }
}

/// What a stalled kiosk had waiting for it once it was finally read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    pub events: u64,
    pub bytes: u64,
    /// The relay had disconnected it (`41`, close or EOF) rather than kept it open.
    pub closed: bool,
}

/// Reads a stalled kiosk's backlog until the relay closes it or it stays quiet for
/// [`DRAIN_IDLE`].
pub async fn drain(mut ws: Ws) -> Drained {
    let mut drained = Drained::default();
    loop {
        let message = match tokio::time::timeout(DRAIN_IDLE, ws.next()).await {
            Err(_) => return drained,
            Ok(message) => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        drained.bytes += text.len() as u64;
        match engineio::parse(&text) {
            Packet::Event { name, .. } if name.starts_with("data.") => drained.events += 1,
            Packet::Disconnect | Packet::Close => break,
            _ => {}
        }
    }
    drained.closed = true;
    drained
}

/// What became of the oversized message.
#[derive(Debug, Clone)]
pub struct Oversize {
    pub bytes: usize,
    /// Sending it failed part-way (the relay closed the connection while it was written).
    pub send_error: Option<String>,
    /// The relay ended the connection within [`OVERSIZE_WAIT`].
    pub cut_off: bool,
    pub how: String,
    pub millis_to_cut_off: Option<u64>,
}

/// Connects one more kiosk and sends a `42["x","AAAA…"]` of `bytes` bytes, in one frame or in
/// fragments, then waits to be cut off.
pub async fn oversize(options: &Options, bytes: usize) -> Result<Oversize, ConnectFailure> {
    let mut ws = connect(options).await?;
    let packet = engineio::oversized(bytes);
    let started = Instant::now();
    let sent = match options.oversize_fragment {
        None => ws.send(Message::text(packet)).await,
        Some(size) => send_fragments(&mut ws, Bytes::from(packet), size).await,
    };
    let send_error = sent.err().map(|e| e.to_string());
    let mut how = String::new();
    let deadline = started + OVERSIZE_WAIT;
    let cut_off = loop {
        let message = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => break false,
            Ok(message) => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => match engineio::parse(&text) {
                Packet::Ping => {
                    ws.send(Message::text(engineio::PONG)).await.ok();
                }
                Packet::Disconnect | Packet::Close => {
                    how = format!("packet {text}");
                    break true;
                }
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                how = match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close".into(),
                };
                break true;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                how = format!("error: {e}");
                break true;
            }
            None => {
                how = "EOF".into();
                break true;
            }
        }
    };
    Ok(Oversize {
        bytes,
        send_error,
        cut_off,
        how,
        millis_to_cut_off: cut_off.then(|| started.elapsed().as_millis() as u64),
    })
}

async fn send_fragments(
    ws: &mut Ws,
    packet: Bytes,
    size: usize,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let count = packet.len().div_ceil(size);
    for i in 0..count {
        let chunk = packet.slice(i * size..((i + 1) * size).min(packet.len()));
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        ws.feed(Message::Frame(Frame::message(
            chunk,
            opcode,
            i + 1 == count,
        )))
        .await?;
    }
    ws.flush().await
}
