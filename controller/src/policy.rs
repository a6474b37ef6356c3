//! The auto-restart policy: a pure state machine with injected time (unix milliseconds), so its
//! rules are tested without waiting.
//!
//! A service is restarted only for a *wedge*: a failure a restart is known to cure (a 5xx whose
//! text names CUDA, cuFFT, cuBLAS or vLLM's engine core; a loaded model that stops answering in
//! time). Never within the grace period after the controller or the service started, never twice
//! within the cooldown, and at most `max_restarts` within the window. Everything else is only
//! reported.

/// The policy's limits (from settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_restarts: u32,
    pub window_ms: i64,
    pub cooldown_ms: i64,
    pub grace_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_restarts: 3,
            window_ms: 30 * 60_000,
            cooldown_ms: 120_000,
            grace_ms: 60_000,
        }
    }
}

/// A failed probe, as the policy sees it.
#[derive(Debug, Clone, Default)]
pub struct Failure {
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The start of the answer's body or the error text.
    pub text: String,
    /// The probe ran out of time.
    pub timed_out: bool,
    /// A model is loaded (so a timeout means it is stuck, not loading).
    pub model_loaded: bool,
}

/// Texts of failures a restart cures.
const WEDGE_WORDS: &[&str] = &[
    "cuda",
    "cufft",
    "cublas",
    "cudnn",
    "engine core",
    "enginecore",
    "enginedeaderror",
];

/// The wedge this failure shows, in words, or `None` when it is not one.
pub fn wedge_signature(f: &Failure) -> Option<String> {
    if f.status.is_some_and(|s| s >= 500) {
        let lower = f.text.to_ascii_lowercase();
        if let Some(w) = WEDGE_WORDS.iter().find(|w| lower.contains(**w)) {
            return Some(format!(
                "HTTP {} naming {w:?}",
                f.status.unwrap_or_default()
            ));
        }
    }
    if f.timed_out && f.model_loaded {
        return Some("a loaded model stopped answering in time".into());
    }
    None
}

/// What to do about a wedge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Restart,
    /// Not now, and why.
    Withhold(String),
}

/// Decide whether to restart at `now`, given the restarts already made (their times), when the
/// controller started, and when the service last started (if known).
pub fn decide(
    limits: &Limits,
    restarts: &[i64],
    now: i64,
    controller_started: i64,
    service_started: Option<i64>,
) -> Verdict {
    let secs = |ms: i64| ms.max(0) / 1000;
    if now - controller_started < limits.grace_ms {
        return Verdict::Withhold(format!(
            "the controller started {} s ago (grace {} s)",
            secs(now - controller_started),
            secs(limits.grace_ms)
        ));
    }
    if let Some(started) = service_started
        && now - started < limits.grace_ms
    {
        return Verdict::Withhold(format!(
            "the service started {} s ago (grace {} s)",
            secs(now - started),
            secs(limits.grace_ms)
        ));
    }
    let recent = restarts
        .iter()
        .filter(|t| now - **t < limits.window_ms)
        .count();
    if recent >= limits.max_restarts as usize {
        return Verdict::Withhold(format!(
            "already restarted {recent} times in the last {} min (limit {}); it needs a person",
            secs(limits.window_ms) / 60,
            limits.max_restarts
        ));
    }
    if let Some(last) = restarts.iter().max()
        && now - last < limits.cooldown_ms
    {
        return Verdict::Withhold(format!(
            "restarted {} s ago (cooldown {} s)",
            secs(now - last),
            secs(limits.cooldown_ms)
        ));
    }
    Verdict::Restart
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn check(restarts: &[i64], now: i64, service_started: Option<i64>, expect: Option<&str>) {
        let v = decide(&Limits::default(), restarts, now, 0, service_started);
        match (expect, v) {
            (None, Verdict::Restart) => {}
            (Some(want), Verdict::Withhold(why)) => {
                assert!(why.contains(want), "{why:?} should say {want:?}")
            }
            (want, got) => panic!("at {now}: expected {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn grace_after_controller_and_service_start() {
        check(&[], 30_000, None, Some("controller started 30 s ago"));
        check(&[], 59_999, None, Some("grace 60 s"));
        check(&[], 60_000, None, None);
        check(
            &[],
            10 * MIN,
            Some(10 * MIN - 5_000),
            Some("service started 5 s ago"),
        );
        check(&[], 10 * MIN, Some(9 * MIN), None);
    }

    #[test]
    fn cooldown_between_restarts() {
        let first = 5 * MIN;
        check(&[first], first + 119_000, None, Some("cooldown 120 s"));
        check(&[first], first + 120_000, None, None);
    }

    #[test]
    fn at_most_three_in_thirty_minutes() {
        let r = [5 * MIN, 8 * MIN, 11 * MIN];
        // The fourth wedge inside 30 minutes of the first is not restarted...
        check(&r, 20 * MIN, None, Some("already restarted 3 times"));
        check(
            &r,
            5 * MIN + 30 * MIN - 1,
            None,
            Some("already restarted 3 times"),
        );
        // ...until the first restart leaves the window.
        check(&r, 5 * MIN + 30 * MIN, None, None);
    }

    #[test]
    fn only_wedges_are_restarted() {
        let f = |status: Option<u16>, text: &str, timed_out: bool, loaded: bool| Failure {
            status,
            text: text.into(),
            timed_out,
            model_loaded: loaded,
        };
        let wedges = [
            f(
                Some(500),
                "RuntimeError: cuFFT error: CUFFT_INTERNAL_ERROR",
                false,
                false,
            ),
            f(
                Some(500),
                "CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx",
                false,
                false,
            ),
            f(
                Some(500),
                "CUDA error: an illegal memory access was encountered",
                false,
                false,
            ),
            f(Some(500), "EngineCore encountered an issue", false, true),
            f(Some(503), "Engine core proc died unexpectedly", false, true),
            f(None, "timed out", true, true),
        ];
        for w in &wedges {
            assert!(wedge_signature(w).is_some(), "{w:?}");
        }
        let not = [
            f(Some(503), "loading", false, false),
            f(
                Some(400),
                "CUDA in a 400 is the client's problem",
                false,
                false,
            ),
            f(None, "connection refused", false, true),
            f(None, "timed out", true, false),
            f(Some(500), "internal server error", false, true),
        ];
        for n in &not {
            assert!(wedge_signature(n).is_none(), "{n:?}");
        }
    }
}
