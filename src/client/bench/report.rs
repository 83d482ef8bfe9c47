//! The bench's report in words.

use super::BenchReport;

impl BenchReport {
    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "clients {} in {} room(s), senders {}\n\
             connect      {:.3} s ({:.0} handshakes+hello/s)\n\
             deliveries   {} of {} expected ({} lost, {} out of order, {} messages refused)\n\
             throughput   {:.0} deliveries/s over {:.3} s\n\
             latency      p50 {} us, p90 {} us, p99 {} us, max {} us\n",
            self.clients,
            self.rooms,
            self.senders,
            self.connect_secs,
            self.handshakes_per_sec,
            self.received,
            self.expected,
            self.lost(),
            self.out_of_order,
            self.refused,
            self.deliveries_per_sec,
            self.send_secs,
            self.latency_us.p50,
            self.latency_us.p90,
            self.latency_us.p99,
            self.latency_us.max,
        );
        if let Some(c) = &self.shutdown {
            out.push_str(&format!(
                "shutdown     {} closed with 1001, {} with another code, {} dropped; {} messages acked, {} of them \
                 not delivered to every member\n",
                c.closed_1001, c.closed_other, c.dropped, c.acked, c.acked_not_delivered
            ));
        }
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "server       RSS {} KiB idle -> {} KiB connected ({:.2} KiB/connection) -> {} KiB end; \
                 CPU {:.2} s ({:.2} us/delivery)\n",
                s.rss_before_kib, s.rss_connected_kib, s.rss_per_connection_kib, s.rss_end_kib, s.cpu_secs, s.cpu_us_per_delivery
            ));
        }
        out
    }

    /// Deliveries that never arrived (those of refused messages were never coming).
    pub fn lost(&self) -> u64 {
        self.expected
            .saturating_sub(self.received + self.refused_deliveries)
    }

    /// What went wrong, if anything: an unclean shutdown (with `until_close`) or lost deliveries.
    pub fn failure(&self) -> Option<String> {
        match &self.shutdown {
            Some(c) if c.closed_1001 != self.clients || c.acked_not_delivered > 0 => {
                Some("shutdown was not clean".into())
            }
            Some(_) => None,
            None if self.lost() > 0 => Some(format!("{} deliveries lost", self.lost())),
            None => None,
        }
    }
}
