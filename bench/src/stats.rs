//! Latency samples to percentiles, and the flat JSON objects the harness reads.

use std::fmt::Write as _;
use std::time::Duration;

/// Latency samples in microseconds.
#[derive(Debug, Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    /// Records one latency.
    pub fn push(&mut self, latency: Duration) {
        self.0.push(latency.as_micros() as u64);
    }

    /// Takes in another set of samples.
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q`-th percentile (0..=100), nearest rank; 0 without samples.
    pub fn percentile(&mut self, q: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        let rank = ((q / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// Adds `p50_us`, `p99_us` and `max_us` fields named `{prefix}p50_us` and so on.
    pub fn write_to(&mut self, json: &mut Json, prefix: &str) {
        json.num(&format!("{prefix}p50_us"), self.percentile(50.0) as f64);
        json.num(&format!("{prefix}p99_us"), self.percentile(99.0) as f64);
        json.num(&format!("{prefix}max_us"), self.percentile(100.0) as f64);
    }
}

/// A one-line JSON object of numbers and plain strings, enough for the harness and
/// cheaper than a serde dependency.
#[derive(Debug, Default)]
pub struct Json(String);

impl Json {
    /// An empty object.
    pub fn new() -> Self {
        Json::default()
    }

    fn key(&mut self, key: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        let _ = write!(self.0, "\"{key}\":");
    }

    /// A number field; non-finite values become `null`.
    pub fn num(&mut self, key: &str, value: f64) -> &mut Self {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.0, "{}", (value * 1000.0).round() / 1000.0);
        } else {
            self.0.push_str("null");
        }
        self
    }

    /// A string field; quotes, backslashes and control characters are dropped rather
    /// than escaped, since only names and error summaries go here.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        let clean: String = value
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect();
        let _ = write!(self.0, "\"{clean}\"");
        self
    }

    /// A field whose value is already JSON.
    pub fn raw(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.0.push_str(value);
        self
    }

    /// The object as text.
    pub fn finish(&self) -> String {
        if self.0.is_empty() {
            "{}".to_owned()
        } else {
            format!("{}}}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples = Samples::default();
        for us in 1..=100 {
            samples.push(Duration::from_micros(us));
        }
        assert_eq!(samples.percentile(50.0), 50);
        assert_eq!(samples.percentile(99.0), 99);
        assert_eq!(samples.percentile(100.0), 100);
    }

    #[test]
    fn json_is_flat_and_valid() {
        let mut json = Json::new();
        json.num("a", 1.5).str("b", "x\"y").raw("c", "[1]");
        assert_eq!(json.finish(), r#"{"a":1.5,"b":"xy","c":[1]}"#);
    }
}
