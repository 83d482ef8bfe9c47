//! tungstenite's WebSocket over a [`Transport`], polled by the one task that serves the connection.
//!
//! In place of tokio-tungstenite's `WebSocketStream`, whose adapter gives every stream two
//! reference-counted waker proxies (128 bytes on the heap per connection), so that its reading
//! and writing halves may be polled by different tasks. A connection here is read and written by
//! its own task only, so the adapter keeps that task's waker (16 bytes, in the task) and tungstenite's
//! blocking-style calls see a `WouldBlock` wherever the task must wait.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, WebSocket};

use super::transport::Transport;

/// An upgraded connection: frames in, control frames and flushes out (chat frames are queued in
/// the mailbox, framed already).
#[derive(Debug)]
pub struct Ws {
    inner: WebSocket<Blocking>,
}

/// The transport as `io::Read` and `io::Write`, with the waker of the task polling it: what
/// would wait is a `WouldBlock`, and the task is woken when it may go on.
#[derive(Debug)]
struct Blocking {
    transport: Transport,
    waker: Waker,
}

impl Blocking {
    fn with_context<T>(
        &mut self,
        f: impl FnOnce(Pin<&mut Transport>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let mut cx = Context::from_waker(&self.waker);
        match f(Pin::new(&mut self.transport), &mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        self.with_context(|t, cx| t.poll_read(cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl Write for Blocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with_context(|t, cx| t.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.with_context(|t, cx| t.poll_flush(cx))
    }
}

/// `Pending` for a `WouldBlock`; a closed connection as `closed`.
fn cvt<T>(r: Result<T, WsError>, closed: impl FnOnce() -> T) -> Poll<Result<T, WsError>> {
    match r {
        Ok(v) => Poll::Ready(Ok(v)),
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(closed())),
        Err(e) => Poll::Ready(Err(e)),
    }
}

impl Ws {
    /// The WebSocket on `transport`, whose first bytes (read with the upgrade request) are `part`.
    pub fn from_partially_read(transport: Transport, part: Vec<u8>, config: WebSocketConfig) -> Ws {
        let io = Blocking {
            transport,
            waker: Waker::noop().clone(),
        };
        Ws {
            inner: WebSocket::from_partially_read(io, part, Role::Server, Some(config)),
        }
    }

    /// The byte stream under the WebSocket.
    pub fn get_mut(&mut self) -> &mut Transport {
        &mut self.inner.get_mut().transport
    }

    /// Runs `f` for the task behind `cx`: it is woken when what `f` waited for is ready.
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WebSocket<Blocking>) -> Result<T, WsError>,
        closed: impl FnOnce() -> T,
    ) -> Poll<Result<T, WsError>> {
        let io = self.inner.get_mut();
        if !io.waker.will_wake(cx.waker()) {
            io.waker.clone_from(cx.waker());
        }
        cvt(f(&mut self.inner), closed)
    }

    /// The next message; `None` once the connection is closed (a close frame was exchanged or the
    /// peer went). After an error the stream is unusable.
    pub async fn next(&mut self) -> Option<Result<Message, WsError>> {
        poll_fn(|cx| self.poll(cx, |ws| ws.read().map(Some), || None))
            .await
            .transpose()
    }

    /// Writes what is queued (a closed connection has nothing left to write).
    pub async fn flush(&mut self) -> Result<(), WsError> {
        poll_fn(|cx| self.poll(cx, |ws| ws.flush(), || ())).await
    }

    /// Sends `frame` as the close frame (once) and writes it.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        let mut frame = Some(frame);
        poll_fn(|cx| {
            // The first poll queues the close frame; later ones (and tungstenite, once closing)
            // only flush.
            let frame = frame.take().flatten();
            self.poll(cx, |ws| ws.close(frame), || ())
        })
        .await
    }
}
