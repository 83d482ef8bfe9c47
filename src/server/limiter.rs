//! Connection caps: total and per address (HTTP 503 beyond) and a per-address connect rate
//! (HTTP 429 beyond). A [`ConnSlot`] is one open connection's place; the connection's task holds it
//! and frees it when it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

use crate::config::ServerConfig;
use crate::memory::Shrink;
use crate::session::rate::{Rate, TokenBucket};

/// Connect-rate buckets kept before idle (full) ones are pruned.
const MAX_RATE_ENTRIES: usize = 4096;

/// Why a connection was turned away: HTTP 503 or 429, the `reason` label of
/// `chatd_connections_refused_total`, and the line the client reads. The same type the
/// handshake answers its own refusals with.
pub(super) use crate::connection::HttpRefusal as Refusal;

/// Counts open connections, in total and per IP address.
#[derive(Debug)]
pub(super) struct ConnLimiter {
    limit_gauge: IntGauge,
    max_total: std::sync::atomic::AtomicUsize,
    max_per_ip: usize,
    /// The connect rate per address (`server.connect_rate_per_ip`, `connect_burst_per_ip`).
    rate: Rate,
    open_gauge: IntGauge,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    total: usize,
    /// The most connections open at once since memory was last given back (`memory`).
    peak: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connect-rate buckets per address.
    rates: HashMap<IpAddr, TokenBucket>,
}

/// One open connection's place in the limits; freed on drop.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    /// The address it counts under; `None` until a proxied connection's client is known.
    ip: Option<IpAddr>,
}

impl ConnLimiter {
    /// `limit_gauge` shows the total cap (`chatd_connections_limit`, 0 = none).
    pub(super) fn new(
        server: &ServerConfig,
        open_gauge: IntGauge,
        limit_gauge: IntGauge,
    ) -> ConnLimiter {
        limit_gauge.set(i64::try_from(server.max_connections).unwrap_or(i64::MAX));
        ConnLimiter {
            limit_gauge,
            max_total: std::sync::atomic::AtomicUsize::new(server.max_connections),
            max_per_ip: server.max_connections_per_ip,
            rate: Rate::new(server.connect_burst_per_ip, server.connect_rate_per_ip),
            open_gauge,
            state: Mutex::new(LimiterState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        crate::sync::lock(&self.state)
    }

    /// A slot for one more connection from `ip`, or why not. Addresses count as
    /// `addr::address_key` groups them (an IPv6 /64 is one client).
    pub(super) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refusal> {
        let mut slot = self.acquire_unplaced()?;
        slot.place(ip)?;
        Ok(slot)
    }

    /// A slot counted in the total only, for a connection from a trusted proxy: the client's
    /// address is known later (`ConnSlot::place`), and the proxy's own must not fill its caps.
    pub(super) fn acquire_unplaced(self: &Arc<Self>) -> Result<ConnSlot, Refusal> {
        let mut state = self.lock();
        let max_total = self.max_total.load(std::sync::atomic::Ordering::Relaxed);
        if max_total > 0 && state.total >= max_total {
            return Err(Refusal::new(
                503,
                "capacity",
                "server at capacity: too many connections\n",
            ));
        }
        state.total += 1;
        state.peak = state.peak.max(state.total);
        self.open_gauge.inc();
        Ok(ConnSlot {
            limiter: self.clone(),
            ip: None,
        })
    }

    /// Counts one more connection from `ip` (already a key), or why not.
    fn count(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut state = self.lock();
        if self.max_per_ip > 0 && state.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Refusal::new(
                503,
                "per_ip",
                "too many connections from your address\n",
            ));
        }
        if !self.rate.is_unlimited() {
            if state.rates.len() >= MAX_RATE_ENTRIES {
                state.rates.retain(|_, bucket| !bucket.is_full());
            }
            // The table stays bounded: when it is full of addresses that are all connecting,
            // a new address is not tracked (it still meets the per-address and total caps).
            let tracked = state.rates.len() < MAX_RATE_ENTRIES || state.rates.contains_key(&ip);
            if tracked && !state.rates.entry(ip).or_default().try_take(self.rate) {
                return Err(Refusal::new(
                    429,
                    "rate",
                    "connecting too often from your address; slow down\n",
                ));
            }
        }
        if self.max_per_ip > 0 {
            *state.per_ip.entry(ip).or_default() += 1;
        }
        Ok(())
    }

    /// Lowers the total cap to `cap` if it is higher (0 counts as unlimited); returns the new cap
    /// when it changed.
    pub(super) fn cap_total(&self, cap: usize) -> Option<usize> {
        use std::sync::atomic::Ordering;
        let now = self.max_total.load(Ordering::Relaxed);
        if now != 0 && now <= cap {
            return None;
        }
        self.max_total.store(cap, Ordering::Relaxed);
        self.limit_gauge.set(i64::try_from(cap).unwrap_or(i64::MAX));
        Some(cap)
    }

    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        self.lock().total
    }
}

impl ConnSlot {
    /// Counts this connection under the client's address (once; a placed slot keeps its place).
    pub(super) fn place(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.ip.is_some() {
            return Ok(());
        }
        let ip = crate::addr::address_key(ip);
        self.limiter.count(ip)?;
        self.ip = Some(ip);
        Ok(())
    }
}

impl crate::connection::Admission for ConnSlot {
    fn proxied(&self) -> bool {
        self.ip.is_none()
    }

    fn admit(&mut self, client: IpAddr) -> Result<(), Refusal> {
        self.place(client)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        state.total -= 1;
        if crate::memory::connections_left(state.total, state.peak) {
            state.peak = state.total;
        }
        self.limiter.open_gauge.dec();
        if self.limiter.max_per_ip > 0
            && let Some(ip) = self.ip
            && let Some(n) = state.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&ip);
                state.per_ip.shrink_if_sparse();
            }
        }
    }
}
