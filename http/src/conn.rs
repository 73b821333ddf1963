//! Connection limits every listener applies (`ConnectionLimits`): a cap on open
//! connections, a deadline for silent connections, and the per-connection wrapper that
//! carries both. HTTP/1 header timeouts and keep-alive limits are applied by
//! [`serve_with`](crate::serve_with) on top; gRPC servers take the stream of
//! [`incoming`] connections. With a [`TlsAcceptor`] every connection is a TLS one
//! ([`Conn::Tls`]); its handshake runs on the connection's own task, never in the accept
//! loop, so a client that stalls mid-handshake holds only its own slot (until
//! `header_read_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use datatracing_config::ConnectionLimits;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::tls::TlsAcceptor;

/// A connection that counts against its listener's cap until dropped, and fails with
/// `TimedOut` once nothing was received or sent for `idle`.
#[derive(Debug)]
pub struct Limited<IO> {
    inner: IO,
    idle: Duration,
    last_activity: Instant,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Limited<IO> {
    fn new(inner: IO, idle: Duration, slot: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            last_activity: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle)),
            _slot: slot,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    fn active(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Called when the inner connection is not ready: fails once the connection has been
    /// silent for `idle`. The timer is moved only when it fires early, not on every byte.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.deadline.as_mut().poll(cx));
            let due = self.last_activity + self.idle;
            if Instant::now() >= due {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle longer than connections.idle_timeout",
                ));
            }
            self.deadline.as_mut().reset(due);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            // A client that stops reading holds the connection as surely as a silent one.
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check_idle(cx).map(Err),
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An accepted connection: plain, or TLS once its handshake completed.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(Limited<TcpStream>),
    /// TLS over TCP, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<Limited<TcpStream>>>),
}

impl Conn {
    /// The connection as accepted, after the TLS handshake when `tls` is given (bounded by
    /// `handshake_timeout`).
    pub async fn establish(
        tcp: Limited<TcpStream>,
        tls: Option<&TlsAcceptor>,
        handshake_timeout: Duration,
    ) -> io::Result<Self> {
        match tls {
            None => Ok(Conn::Plain(tcp)),
            Some(tls) => Ok(Conn::Tls(Box::new(
                tls.handshake(tcp, handshake_timeout).await?,
            ))),
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(c) => c.get_ref(),
            Conn::Tls(t) => t.get_ref().0.get_ref(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_write(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_flush(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_shutdown(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_write_vectored(cx, bufs),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(c) => c.is_write_vectored(),
            Conn::Tls(t) => t.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

/// Accepts connections within the cap: waits for a free slot before accepting, so excess
/// clients queue in the kernel instead of taking file descriptors.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl Acceptor {
    /// An acceptor with `limits` on `listener`.
    pub fn new(listener: TcpListener, limits: &ConnectionLimits) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            idle: limits.idle_timeout.get(),
        }
    }

    /// The next connection. Accept errors (a client that went away, a full descriptor
    /// table) are logged and retried after a short pause, never returned.
    pub async fn accept(&self) -> Limited<TcpStream> {
        loop {
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                // The semaphore is never closed; wait forever rather than spin.
                return std::future::pending().await;
            };
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Limited::new(stream, self.idle, slot);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The listener's address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// The connections of `listener` under `limits`, for a gRPC server
/// (`serve_with_incoming`), TLS ones when `tls` is given. TLS handshakes run concurrently
/// on their own tasks, each bounded by `limits.header_read_timeout`; only completed ones
/// are yielded. Dropping the stream stops accepting.
pub fn incoming(
    listener: TcpListener,
    limits: &ConnectionLimits,
    tls: Option<TlsAcceptor>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let acceptor = Acceptor::new(listener, limits);
    let handshake_timeout = limits.header_read_timeout.get();
    // Completed connections wait here for the server; a few suffice, the accept loop
    // waits when they are not taken.
    let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(16);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                c = acceptor.accept() => c,
                _ = tx.closed() => return,
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                if let Ok(conn) = Conn::establish(tcp, tls.as_ref(), handshake_timeout).await {
                    let _ = tx.send(conn).await;
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), rx))
    })
}
