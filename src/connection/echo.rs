//! The diagnostic echo (`diagnostics.echo_path`): every text and binary message comes straight
//! back, with no hello, no chat and no rate limits. Autobahn|Testsuite runs against it
//! (scripts/autobahn.sh) to check the WebSocket layer alone; it is a [`Handler`] like the chat
//! session, so the connection loop knows nothing of it.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::mailbox::{self, Mailbox};
use super::{Flow, Handler};

/// Echoes what it is sent.
pub(crate) struct Echo {
    mailbox: Arc<Mailbox>,
    /// Binary messages to send back, with the next write (text goes back as replies).
    binary: Vec<Vec<u8>>,
}

impl Echo {
    pub(crate) fn new(mailbox: Arc<Mailbox>) -> Echo {
        Echo {
            mailbox,
            binary: Vec::new(),
        }
    }
}

impl Handler for Echo {
    fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    fn on_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Flow {
        out.push(Utf8Bytes::from(text.to_string()));
        Flow::Continue
    }

    fn on_binary(&mut self, data: &[u8], _: &mut Vec<Utf8Bytes>) -> Flow {
        self.binary.push(data.to_vec());
        Flow::Continue
    }

    fn has_own_frames(&self) -> bool {
        !self.binary.is_empty()
    }

    fn queue_own_frames(&mut self) {
        for data in self.binary.drain(..) {
            self.mailbox.queue_frame(mailbox::OPCODE_BINARY, &data);
        }
    }

    /// Pings are the WebSocket layer's (answered there); an echo counts nothing.
    fn on_ping(&mut self) -> Flow {
        Flow::Continue
    }

    fn on_controls(&mut self, _: &mut Vec<Utf8Bytes>) -> Flow {
        Flow::Continue
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn on_timer(&mut self, _: Instant) {}

    /// Nothing to say hello for: no handshake deadline past the upgrade.
    fn welcomed(&self) -> bool {
        true
    }

    fn shutdown_notice(&self) -> Utf8Bytes {
        Utf8Bytes::from_static("server is shutting down")
    }
}
