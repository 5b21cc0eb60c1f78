//! A simulated production machine for the demo and the OEE tests: it cycles
//! at a nominal rate with jitter, stops for faults with reason codes and
//! durations, and rejects a share of its pieces. Sans-IO and deterministic:
//! everything is a function of the seconds since start and the seed, so a
//! test can ask the model what truly happened ([`MachineSim::truth`]).
//!
//! Invariants:
//! - Faults never overlap: fault `k` starts in the middle half of the
//!   `k`-th window of `fault_every` and lasts `fault_for` × 0.5 … 1.5
//!   (the configuration keeps `fault_for` ≤ `fault_every` / 6).
//! - A cycle only runs while the machine runs: cycle `i` ends once the run
//!   time reaches the sum of the first `i` cycle times (each the nominal
//!   time × (1 ± `jitter`)); the counters only grow.
//! - Reads must come in time order (a PLC is read forward); an earlier
//!   time reads the state as of the latest one.

/// What the `[devices.sim.machine]` table says.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineParams {
    /// Nominal cycle time (s).
    pub cycle: f64,
    /// ± fraction of the cycle time, per cycle.
    pub jitter: f64,
    /// One fault per this many seconds (0: never).
    pub fault_every: f64,
    /// Its mean duration (s).
    pub fault_for: f64,
    /// The reason codes faults carry, in turn at random.
    pub fault_codes: Vec<i64>,
    /// Share of pieces rejected.
    pub reject_rate: f64,
    pub seed: u64,
}

/// One of the machine's outputs, as a tag reads it (`machine(count)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Pieces produced (a counter).
    Count,
    Good,
    Rejects,
    /// Boolean: running.
    Running,
    /// String: `running` or `faulted`.
    State,
    /// The current fault's code (0 when running).
    Fault,
}

impl Output {
    pub fn parse(s: &str) -> Option<Output> {
        Some(match s {
            "count" => Output::Count,
            "good" => Output::Good,
            "rejects" => Output::Rejects,
            "running" => Output::Running,
            "state" => Output::State,
            "fault" => Output::Fault,
            _ => return None,
        })
    }
}

/// A value of the machine at an instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Num(f64),
    Bool(bool),
    Text(&'static str),
}

/// A hash of (seed, k, salt) in [0, 1).
fn unit(seed: u64, k: u64, salt: u64) -> f64 {
    let mut x = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The machine's state, advanced as time goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSim {
    p: MachineParams,
    /// The latest time read (s since start).
    at: f64,
    count: u64,
    rejects: u64,
    /// Run time (s) at which the next cycle ends.
    next_end: f64,
}

/// What truly happened up to an instant, for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub run: f64,
    pub count: u64,
    pub rejects: u64,
    /// (start, end, code) of each fault that began before the instant.
    pub faults: Vec<(f64, f64, i64)>,
}

impl MachineSim {
    pub fn new(p: MachineParams) -> MachineSim {
        let first = p.cycle * (1.0 + p.jitter * (2.0 * unit(p.seed, 1, 1) - 1.0));
        MachineSim {
            p,
            at: 0.0,
            count: 0,
            rejects: 0,
            next_end: first,
        }
    }

    /// Fault `k`: (start, end, code).
    fn fault(&self, k: u64) -> (f64, f64, i64) {
        let w = self.p.fault_every;
        let start = k as f64 * w + w * (0.25 + 0.5 * unit(self.p.seed, k, 2));
        let len = self.p.fault_for * (0.5 + unit(self.p.seed, k, 3));
        let codes = &self.p.fault_codes;
        let code = if codes.is_empty() {
            0
        } else {
            codes[(unit(self.p.seed, k, 4) * codes.len() as f64) as usize % codes.len()]
        };
        (start, start + len, code)
    }

    /// The fault in force at `t`, if any.
    fn fault_at(&self, t: f64) -> Option<(f64, f64, i64)> {
        if self.p.fault_every <= 0.0 || t < 0.0 {
            return None;
        }
        let f = self.fault((t / self.p.fault_every) as u64);
        (t >= f.0 && t < f.1).then_some(f)
    }

    /// Seconds of running from 0 to `t`.
    pub fn run_time(&self, t: f64) -> f64 {
        if self.p.fault_every <= 0.0 {
            return t.max(0.0);
        }
        let windows = (t / self.p.fault_every) as u64;
        let mut down = 0.0;
        for k in 0..=windows {
            let (a, b, _) = self.fault(k);
            down += (b.min(t) - a).max(0.0);
        }
        t - down
    }

    /// Advances to `t` (s since start); an earlier `t` changes nothing.
    pub fn advance(&mut self, t: f64) {
        if t <= self.at {
            return;
        }
        self.at = t;
        let run = self.run_time(t);
        while self.next_end <= run {
            self.count += 1;
            if unit(self.p.seed, self.count, 5) < self.p.reject_rate {
                self.rejects += 1;
            }
            let u = 2.0 * unit(self.p.seed, self.count + 1, 1) - 1.0;
            self.next_end += self.p.cycle * (1.0 + self.p.jitter * u);
        }
    }

    /// The output at the latest time advanced to.
    pub fn read(&self, o: Output) -> Reading {
        let fault = self.fault_at(self.at);
        match o {
            Output::Count => Reading::Num(self.count as f64),
            Output::Good => Reading::Num((self.count - self.rejects) as f64),
            Output::Rejects => Reading::Num(self.rejects as f64),
            Output::Running => Reading::Bool(fault.is_none()),
            Output::State => Reading::Text(if fault.is_none() { "running" } else { "faulted" }),
            Output::Fault => Reading::Num(fault.map_or(0.0, |f| f.2 as f64)),
        }
    }

    /// What happened from 0 to `t`, computed afresh (for tests).
    pub fn truth(p: &MachineParams, t: f64) -> Truth {
        let mut m = MachineSim::new(p.clone());
        m.advance(t);
        let mut faults = Vec::new();
        if p.fault_every > 0.0 {
            for k in 0..=((t / p.fault_every) as u64) {
                let f = m.fault(k);
                if f.0 < t {
                    faults.push(f);
                }
            }
        }
        Truth {
            run: m.run_time(t),
            count: m.count,
            rejects: m.rejects,
            faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> MachineParams {
        MachineParams {
            cycle: 2.0,
            jitter: 0.1,
            fault_every: 600.0,
            fault_for: 60.0,
            fault_codes: vec![12, 40],
            reject_rate: 0.05,
            seed: 7,
        }
    }

    #[test]
    fn faults_fall_in_their_windows_never_overlap_and_stop_the_counter() {
        let p = params();
        let t = MachineSim::truth(&p, 6.0 * 3600.0);
        assert_eq!(t.faults.len(), 36);
        for (k, &(a, b, code)) in t.faults.iter().enumerate() {
            let w = k as f64 * 600.0;
            assert!(
                a >= w + 150.0 && b <= w + 600.0 && b - a >= 30.0 && b - a < 90.0,
                "{k}: {a}..{b}"
            );
            assert!(code == 12 || code == 40);
        }
        assert!(t.faults.iter().any(|f| f.2 == 12) && t.faults.iter().any(|f| f.2 == 40));
        let down: f64 = t.faults.iter().map(|(a, b, _)| b - a).sum();
        assert!((t.run + down - 6.0 * 3600.0).abs() < 1e-6);
        // About one piece per 2 s of run time, jitter averaging out.
        let rate = t.count as f64 / t.run;
        assert!((rate - 0.5).abs() < 0.01, "{rate}");
        let share = t.rejects as f64 / t.count as f64;
        assert!((share - 0.05).abs() < 0.01, "{share}");
    }

    #[test]
    fn the_outputs_follow_the_state_and_reading_in_steps_changes_nothing() {
        let p = params();
        let mut m = MachineSim::new(p.clone());
        let (a, b, code) = MachineSim::truth(&p, 600.0).faults[0];
        m.advance(a - 1.0);
        assert_eq!(m.read(Output::Running), Reading::Bool(true));
        assert_eq!(m.read(Output::Fault), Reading::Num(0.0));
        let before = m.read(Output::Count);
        m.advance((a + b) / 2.0);
        assert_eq!(m.read(Output::State), Reading::Text("faulted"));
        assert_eq!(m.read(Output::Fault), Reading::Num(code as f64));
        m.advance(b - 0.001);
        assert!(
            matches!((m.read(Output::Count), before), (Reading::Num(x), Reading::Num(y)) if x - y <= 1.0),
            "the counter stands still while faulted"
        );
        // Read every 100 ms, or once: the same counts.
        let mut stepped = MachineSim::new(p.clone());
        let mut t = 0.0;
        while t < 3000.0 {
            stepped.advance(t);
            t += 0.1;
        }
        stepped.advance(3000.0);
        let once = MachineSim::truth(&p, 3000.0);
        assert_eq!(stepped.read(Output::Count), Reading::Num(once.count as f64));
        assert_eq!(stepped.read(Output::Rejects), Reading::Num(once.rejects as f64));
        assert_eq!(
            stepped.read(Output::Good),
            Reading::Num((once.count - once.rejects) as f64)
        );
        // Going back changes nothing.
        stepped.advance(10.0);
        assert_eq!(stepped.read(Output::Count), Reading::Num(once.count as f64));
    }
}
