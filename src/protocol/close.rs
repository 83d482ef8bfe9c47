//! [`CloseReason`]: every way the server ends a connection, with its close code, reason text
//! and metric label.

/// How a connection ends, as the peer and the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A plain-text client typed `/exit` (1000).
    Bye,
    /// The client started the close handshake; its code is echoed.
    ClientClosed,
    /// The server is shutting down (1001, after a `notice`).
    Shutdown,
    /// Silent for two ping intervals (1001).
    PingTimeout,
    /// The socket broke or the peer vanished without a close frame.
    Gone,
    /// A WebSocket protocol violation (1002).
    Protocol,
    /// A text frame that is not UTF-8 (1007).
    InvalidUtf8,
    /// A message over `limits.max_message_bytes` (1009).
    TooBig,
    /// A frame over `limits.max_message_bytes` (1009).
    FrameTooBig,
    /// Sustained rate-limit abuse, requests or pings (1008).
    RateAbuse,
    /// A missing or invalid token in token mode (1008).
    Unauthorized,
    /// A plain-text session on a token-mode server (1008).
    TokenRequired,
    /// The outbound queue overflowed, or too many requests waited for answers (1008).
    SlowConsumer,
    /// Writes blocked past the write timeout: dropped without a close frame.
    WriteStalled,
    /// No `hello` within the handshake timeout (1008).
    HelloTimeout,
    /// An admin kicked the user (1008, `kicked: <reason>`).
    Kicked,
    /// The user closed this connection from another (`logout`; 1008, `logged out`).
    LoggedOut,
}

impl CloseReason {
    /// The close code sent, or `None` when no close frame is sent (or the peer's is echoed).
    pub fn code(self) -> Option<u16> {
        use CloseReason::*;
        match self {
            Bye => Some(1000),
            Shutdown | PingTimeout => Some(1001),
            Protocol => Some(1002),
            InvalidUtf8 => Some(1007),
            RateAbuse | Unauthorized | TokenRequired | SlowConsumer | HelloTimeout | Kicked
            | LoggedOut => Some(1008),
            TooBig | FrameTooBig => Some(1009),
            ClientClosed | Gone | WriteStalled => None,
        }
    }

    /// The close frame's reason text (a kick adds its own reason after `kicked: `).
    pub fn text(self) -> &'static str {
        use CloseReason::*;
        match self {
            Bye => "bye",
            ClientClosed | Gone | WriteStalled => "",
            Shutdown => "server shutting down",
            PingTimeout => "ping timeout",
            Protocol => "protocol error",
            InvalidUtf8 => "invalid UTF-8",
            TooBig => "message too big",
            FrameTooBig => "frame too big",
            RateAbuse => "rate limit exceeded",
            Unauthorized => "unauthorized",
            TokenRequired => "token required",
            SlowConsumer => "slow consumer: outbound queue full",
            HelloTimeout => "handshake timeout: no hello",
            Kicked => "kicked",
            LoggedOut => "logged out",
        }
    }

    /// The `reason` label of `chatd_connections_closed_total`.
    pub fn label(self) -> &'static str {
        use CloseReason::*;
        match self {
            Bye | ClientClosed => "client",
            Shutdown => "shutdown",
            PingTimeout => "ping_timeout",
            Gone => "gone",
            Protocol => "protocol_error",
            InvalidUtf8 => "invalid_utf8",
            TooBig | FrameTooBig => "too_big",
            RateAbuse => "rate_abuse",
            Unauthorized | TokenRequired => "unauthorized",
            SlowConsumer | WriteStalled => "slow_consumer",
            HelloTimeout => "hello_timeout",
            Kicked => "kicked",
            LoggedOut => "logged_out",
        }
    }

    /// Every label value, for pre-creating the metric's series.
    pub const LABELS: &[&str] = &[
        "client",
        "shutdown",
        "ping_timeout",
        "gone",
        "protocol_error",
        "invalid_utf8",
        "too_big",
        "rate_abuse",
        "unauthorized",
        "slow_consumer",
        "hello_timeout",
        "kicked",
        "logged_out",
    ];
}
