//! A client connection's byte stream, plain TCP or TLS over TCP, as tungstenite sees it.
//!
//! Until [`Transport::attach`] (the upgrade) it passes bytes straight through. After it, every write
//! goes through the connection's [`Mailbox`]: what tungstenite writes (pings, pongs, close frames)
//! is queued behind the frames already there, and a flush drains the queue to the socket. A plain
//! socket is shared with the mailbox (`Arc<TcpStream>`), so the server's flusher can write to it
//! without waking the connection task; reads stay with the task.
//!
//! A plain socket is read into a buffer of the thread's, as uWebSockets does, not into one of the
//! connection's: tungstenite asks for a few bytes at a time (`limits.read_buffer_bytes`, its own
//! buffer, which an idle connection keeps), and what the socket gave beyond that waits in a
//! spill of the connection's, made only while there is some and freed once it is taken.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::mailbox::{Flusher, Mailbox, write_plain};
use super::tls::TlsConn;

/// The most one read from a plain socket takes (into the thread's buffer).
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where plain sockets are read: one per thread, not one per connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// A client connection's byte stream.
#[derive(Debug)]
pub struct Transport {
    io: Io,
    /// Set at the upgrade: from then on writes are queued there and flushes drain it.
    outbox: Option<Arc<Mailbox>>,
    /// Bytes read from a plain socket that tungstenite has not taken yet (at most
    /// [`READ_CHUNK`]; boxed, so that it costs every connection one pointer).
    spill: Option<Box<Spill>>,
}

/// Read bytes waiting to be taken: `bytes[taken..]`.
#[derive(Debug)]
struct Spill {
    bytes: Box<[u8]>,
    taken: usize,
}

/// Moves what fits into `buf` from `spill`, which goes once everything is taken.
fn take_spilled(spill: &mut Option<Box<Spill>>, buf: &mut ReadBuf<'_>) {
    let Some(s) = spill else { return };
    let n = buf.remaining().min(s.bytes.len() - s.taken);
    buf.put_slice(&s.bytes[s.taken..s.taken + n]);
    s.taken += n;
    if s.taken == s.bytes.len() {
        *spill = None;
    }
}

/// Reads what `tcp` has into `buf`: straight in when `buf` is large, otherwise through the
/// thread's buffer, keeping what does not fit in `spill`. `WouldBlock` when nothing is there.
fn read_plain(
    tcp: &TcpStream,
    buf: &mut ReadBuf<'_>,
    spill: &mut Option<Box<Spill>>,
) -> io::Result<()> {
    if buf.remaining() >= READ_CHUNK {
        let n = tcp.try_read(buf.initialize_unfilled())?;
        buf.advance(n);
        return Ok(());
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let n = tcp.try_read(&mut scratch)?;
        let fits = n.min(buf.remaining());
        buf.put_slice(&scratch[..fits]);
        if fits < n {
            *spill = Some(Box::new(Spill {
                bytes: scratch[fits..n].into(),
                taken: 0,
            }));
        }
        Ok(())
    })
}

#[derive(Debug)]
enum Io {
    /// `ws://`: shared with the mailbox for direct writes.
    Plain(Arc<TcpStream>),
    /// `wss://` (boxed: TLS state is large and only some connections have it).
    Tls(Box<TlsConn>),
}

impl Transport {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport {
            io: Io::Plain(Arc::new(tcp)),
            outbox: None,
            spill: None,
        }
    }

    /// A TLS connection.
    pub fn tls(tls: TlsConn) -> Transport {
        Transport {
            io: Io::Tls(Box::new(tls)),
            outbox: None,
            spill: None,
        }
    }

    /// Routes every later write through `mailbox`; a plain socket is handed to the flusher too,
    /// when there is one.
    pub fn attach(&mut self, mailbox: Arc<Mailbox>, flusher: Option<&Arc<Flusher>>) {
        if let (Io::Plain(tcp), Some(flusher)) = (&self.io, flusher) {
            mailbox.go_direct(tcp.clone(), flusher.clone());
        }
        self.outbox = Some(mailbox);
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.spill.is_some() {
            // Bytes taken from the spill count against the task's budget as a read from the
            // socket would: a client sending large frames must not keep its task from yielding
            // (the flusher and other clients wait on this thread).
            let coop = ready!(tokio::task::coop::poll_proceed(cx));
            take_spilled(&mut this.spill, buf);
            coop.made_progress();
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                match read_plain(tcp, buf, &mut this.spill) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            },
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(outbox) = &this.outbox {
            outbox.queue_raw(buf);
            // Start draining at once: tungstenite does not always flush after writing (a server's
            // reply to a close frame is written, then the connection reports itself closed), so
            // queued bytes must not depend on a later flush. What the socket does not take now
            // goes with the next flush; an error shows there too.
            let _ = Pin::new(this).poll_flush(cx);
            return Poll::Ready(Ok(buf.len()));
        }
        match &mut this.io {
            Io::Plain(tcp) => loop {
                ready!(tcp.poll_write_ready(cx))?;
                match tcp.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            },
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match (&mut this.io, &this.outbox) {
            (Io::Plain(_), None) => Poll::Ready(Ok(())),
            (Io::Plain(tcp), Some(outbox)) => loop {
                match outbox.write_queued(|slices| write_plain(tcp, slices)) {
                    Ok(()) => return Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(tcp.poll_write_ready(cx))?
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            (Io::Tls(tls), outbox) => {
                if let Some(outbox) = outbox {
                    // rustls makes a record per write: hand it whole frames, not header and payload.
                    let written = outbox.write_queued(|slices| {
                        let bytes: Vec<u8> =
                            slices.iter().flat_map(|s| s.iter().copied()).collect();
                        match Pin::new(tls.as_mut()).poll_write(cx, &bytes) {
                            Poll::Ready(done) => done,
                            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                        }
                    });
                    match written {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Pin::new(tls.as_mut()).poll_flush(cx)
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Poll::Ready(
                socket2::SockRef::from(tcp.as_ref()).shutdown(std::net::Shutdown::Write),
            ),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
