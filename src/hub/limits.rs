//! The limits every broker enforces, read once from the configuration.

use crate::config::Config;

/// The chat's limits, as every broker enforces them (a broker's own settings, such as the
/// cluster's Redis timeouts, sit beside these).
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Messages kept per room.
    pub history_size: usize,
    /// Messages included when joining.
    pub history_on_join: usize,
    /// Bytes of history kept per room.
    pub history_bytes_per_room: usize,
    /// Bytes of history kept in all rooms together.
    pub history_bytes: usize,
    /// Rooms that may exist at once (the default room aside).
    pub max_rooms: usize,
    /// Rooms one address may have created that still exist.
    pub max_rooms_per_ip: usize,
    /// Messages a resuming client may be behind by.
    pub resume_max: u64,
    /// Keep private messages too (names are owned: tokens or accounts).
    pub store_pms: bool,
    /// Names are owned (tokens or accounts): a name is whoever the token or password says, and
    /// look-alikes of online names are not refused (they are other accounts).
    pub owned_names: bool,
    /// Connections one user may have at once: `auth.max_sessions_per_user` where names are
    /// owned, one in open mode.
    pub max_sessions: usize,
    /// Members listed in a view, and names listed per `presence` batch.
    pub users_per_page: usize,
    /// Rooms with more members than this batch their joins and leaves (0: every room).
    pub presence_batch_over: usize,
}

impl HubLimits {
    /// The limits a configuration sets.
    pub fn from_config(config: &Config) -> HubLimits {
        HubLimits {
            history_size: config.history.size,
            history_on_join: config.history.on_join,
            history_bytes_per_room: config.history.max_bytes_per_room,
            history_bytes: config.history.max_bytes,
            max_rooms: config.limits.max_rooms,
            max_rooms_per_ip: config.limits.max_rooms_per_ip,
            resume_max: config.history.resume_max,
            store_pms: config.auth.mode.owned_names(),
            owned_names: config.auth.mode.owned_names(),
            max_sessions: if config.auth.mode.owned_names() {
                config.auth.max_sessions_per_user.max(1)
            } else {
                1
            },
            users_per_page: config.limits.users_per_page,
            presence_batch_over: config.limits.presence_batch_over,
        }
    }
}
