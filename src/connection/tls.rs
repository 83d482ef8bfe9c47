//! A server-side TLS stream over rustls whose handshake never runs its crypto on the chat thread.
//!
//! A handshake's expensive steps (key exchange, signing) happen when rustls processes the
//! client's records (`process_new_packets`). [`TlsConn::accept`] reads those records on the
//! runtime and hands the processing to [`Handshakes`], a bounded pool of blocking threads, so a
//! flood of half-open handshakes queues there while established connections keep being served.
//! After the handshake, records are small and decrypting them is cheap: that stays inline.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::{ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Handshake crypto allowed to run at once: with 2 cores, one for handshakes and one for chat.
const HANDSHAKE_THREADS: usize = 1;

/// The pool handshakes run their crypto on.
#[derive(Debug, Clone)]
pub(crate) struct Handshakes {
    permits: Arc<Semaphore>,
}

impl Handshakes {
    pub(crate) fn new() -> Handshakes {
        Handshakes {
            permits: Arc::new(Semaphore::new(HANDSHAKE_THREADS)),
        }
    }

    /// Runs `work` on a blocking thread, one at a time per permit, in arrival order.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| io::Error::other("handshake pool closed"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| io::Error::other("handshake worker failed"))
    }
}

/// An established TLS connection.
#[derive(Debug)]
pub struct TlsConn {
    tcp: TcpStream,
    tls: ServerConnection,
}

/// `io::Read` over a non-blocking socket (what rustls reads records from).
struct TryRead<'a>(&'a TcpStream);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// `io::Write` over a non-blocking socket (what rustls writes records to).
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsConn {
    /// The server side of a TLS handshake on `tcp`.
    pub(crate) async fn accept(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        pool: &Handshakes,
    ) -> io::Result<TlsConn> {
        let mut tls = ServerConnection::new(config).map_err(tls_error)?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while tls.wants_write() {
                tcp.writable().await?;
                match tls.write_tls(&mut TryWrite(&tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if !tls.is_handshaking() {
                return Ok(TlsConn { tcp, tls });
            }
            tcp.readable().await?;
            let n = match tcp.try_read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            // The crypto happens here, off the runtime's thread.
            let (conn, back, result) = pool
                .run(move || {
                    let mut records = &buf[..n];
                    let result = (|| {
                        while !records.is_empty() {
                            tls.read_tls(&mut records)?;
                            tls.process_new_packets().map_err(tls_error)?;
                        }
                        Ok::<_, io::Error>(())
                    })();
                    (tls, buf, result)
                })
                .await?;
            (tls, buf) = (conn, back);
            if let Err(e) = result {
                // Send the alert rustls queued, if any, before giving up.
                let _ = tls.write_tls(&mut TryWrite(&tcp));
                return Err(e);
            }
        }
    }

    /// Writes queued records until rustls has none or the socket is full.
    fn poll_write_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tls.write_tls(&mut TryWrite(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: the peer sent close_notify (a clean end of stream).
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(this.tcp.poll_read_ready(cx))?;
            match this.tls.read_tls(&mut TryRead(&this.tcp)) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = this.tls.process_new_packets() {
                let _ = this.tls.write_tls(&mut TryWrite(&this.tcp));
                return Poll::Ready(Err(tls_error(e)));
            }
            // Alerts or key updates rustls wants to answer go out as they can.
            let _ = this.poll_write_records(cx);
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.tls.writer().write(buf)?;
            if n > 0 || buf.is_empty() {
                // Start sending; what the socket does not take now goes with the flush.
                let _ = this.poll_write_records(cx);
                return Poll::Ready(Ok(n));
            }
            // rustls' send buffer is full: drain it to the socket first.
            ready!(this.poll_write_records(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_records(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.send_close_notify();
        ready!(this.poll_write_records(cx))?;
        Poll::Ready(socket2::SockRef::from(&this.tcp).shutdown(std::net::Shutdown::Write))
    }
}
