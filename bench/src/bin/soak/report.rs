//! The summary of a run: printed, and written as JSON and markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use capstan_bench::stats::Json;

use crate::resources::{Pair, Sample, Usage, FD_MARGIN, RSS_MARGIN_KIB};
use crate::tally::{Counts, Fault};
use crate::traffic::Mix;

/// Rows of the RSS curve in the markdown; the JSON has every sample.
const CURVE_ROWS: usize = 40;

/// One fault and what followed it.
pub(crate) struct Cycle {
    pub(crate) fault: Fault,
    /// Seconds since the start when the fault was injected.
    pub(crate) at: f64,
    /// Seconds until a probe through the tunnel answered again.
    pub(crate) recovery_s: f64,
    /// Descriptors and RSS at the quiet point after it.
    pub(crate) quiet: Pair,
    /// Whether that was within the margins of the baseline.
    pub(crate) near: bool,
}

impl Cycle {
    pub(crate) fn line(&self) -> String {
        format!(
            "t={:.1}s {}: healthy after {:.2}s; quiet point {}{}",
            self.at,
            self.fault.name(),
            self.recovery_s,
            pair_text(&self.quiet),
            if self.near {
                ""
            } else {
                " (NOT near the baseline)"
            }
        )
    }
}

/// Everything a run reports.
pub(crate) struct Summary {
    pub(crate) seed: u64,
    pub(crate) planned_s: u64,
    pub(crate) elapsed_s: f64,
    pub(crate) profile: String,
    pub(crate) commit: String,
    pub(crate) mix: Mix,
    pub(crate) large: (u64, u64),
    pub(crate) baseline: Pair,
    pub(crate) cycles: Vec<Cycle>,
    pub(crate) counts: Counts,
    pub(crate) samples: Vec<Sample>,
    pub(crate) start_retries: u32,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn usage_text(u: Option<Usage>) -> String {
    u.map_or("down".into(), |u| {
        format!("{} fds {:.1} MiB", u.fds, mib(u.rss_kib))
    })
}

/// "gateway 12 fds 8.1 MiB, tunnel 14 fds 9.0 MiB".
pub(crate) fn pair_text(p: &Pair) -> String {
    format!(
        "gateway {}, tunnel {}",
        usage_text(p.gateway),
        usage_text(p.tunnel)
    )
}

fn usage_json(u: Option<Usage>) -> String {
    u.map_or("null".into(), |u| {
        let mut json = Json::new();
        json.num("fds", u.fds as f64)
            .num("rss_kib", u.rss_kib as f64);
        json.finish()
    })
}

fn pair_json(p: &Pair) -> String {
    let mut json = Json::new();
    json.raw("gateway", &usage_json(p.gateway))
        .raw("tunnel", &usage_json(p.tunnel));
    json.finish()
}

fn map_json<K: AsRef<str>>(map: &BTreeMap<K, u64>) -> String {
    let mut json = Json::new();
    for (k, v) in map {
        json.num(k.as_ref(), *v as f64);
    }
    json.finish()
}

/// `text` as a JSON string; failure details may hold quotes and backslashes.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list_json(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(","))
}

impl Summary {
    pub(crate) fn passed(&self) -> bool {
        self.counts.failures.is_empty()
    }

    /// Faults by kind.
    fn faults(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for c in &self.cycles {
            *out.entry(c.fault.name()).or_default() += 1;
        }
        out
    }

    /// The largest descriptors and RSS of each process in any sample or quiet point.
    fn max_seen(&self) -> Pair {
        let all = self
            .samples
            .iter()
            .map(|s| s.usage)
            .chain(self.cycles.iter().map(|c| c.quiet))
            .chain([self.baseline]);
        let mut max = Pair::default();
        for p in all {
            for (m, u) in [(&mut max.gateway, p.gateway), (&mut max.tunnel, p.tunnel)] {
                if let Some(u) = u {
                    let m = m.get_or_insert(u);
                    m.fds = m.fds.max(u.fds);
                    m.rss_kib = m.rss_kib.max(u.rss_kib);
                }
            }
        }
        max
    }

    /// Writes `summary.json` and `summary.md` into `out`, and prints the markdown.
    pub(crate) fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out)?;
        let json = self.json();
        std::fs::write(out.join("summary.json"), format!("{json}\n"))
            .context("writing summary.json")?;
        let markdown = self.markdown();
        std::fs::write(out.join("summary.md"), &markdown).context("writing summary.md")?;
        println!("\n{markdown}");
        println!("soak: wrote {}/summary.json and summary.md", out.display());
        Ok(())
    }

    fn json(&self) -> String {
        let c = &self.counts;
        let mut json = Json::new();
        json.str("result", if self.passed() { "pass" } else { "fail" })
            // A string: a u64 seed does not fit a JSON reader's f64.
            .str("seed", &self.seed.to_string())
            .num("planned_s", self.planned_s as f64)
            .num("elapsed_s", self.elapsed_s)
            .str("profile", &self.profile)
            .str("commit", &self.commit)
            .raw(
                "mix",
                &format!(
                    "{{\"small_http\":{},\"large_http\":{},\"sse\":{},\"ws\":{}}}",
                    self.mix.small, self.mix.large, self.mix.sse, self.mix.ws
                ),
            )
            .raw(
                "large_bytes",
                &format!("[{},{}]", self.large.0, self.large.1),
            )
            .raw("ok", &map_json(&c.ok))
            .num("checked_bytes", c.bytes as f64)
            .raw("faults", &map_json(&self.faults()))
            .raw("errors", &map_json(&c.errors))
            .raw("errors_by_fault", &map_json(&c.by_fault))
            .raw("error_examples", &{
                let mut j = Json::new();
                for (k, v) in &c.examples {
                    j.raw(k, &list_json(v.iter().map(|e| json_string(e))));
                }
                j.finish()
            })
            .raw("known_issues", &map_json(&c.known))
            .raw("failures", &map_json(&c.failures))
            .num("wrong_bytes", c.wrong_bytes as f64)
            .raw(
                "failure_details",
                &list_json(c.details.iter().map(|d| json_string(d))),
            )
            .num("start_retries", f64::from(self.start_retries))
            .raw(
                "margins",
                &format!("{{\"fds\":{FD_MARGIN},\"rss_kib\":{RSS_MARGIN_KIB}}}"),
            )
            .raw("baseline", &pair_json(&self.baseline))
            .raw("max_seen", &pair_json(&self.max_seen()))
            .raw(
                "cycles",
                &list_json(self.cycles.iter().map(|cy| {
                    let mut j = Json::new();
                    j.str("fault", cy.fault.name())
                        .num("at_s", cy.at)
                        .num("recovery_s", cy.recovery_s)
                        .raw("quiet", &pair_json(&cy.quiet))
                        .raw("near_baseline", if cy.near { "true" } else { "false" });
                    j.finish()
                })),
            )
            .raw(
                "rss_curve",
                &list_json(self.samples.iter().map(|s| {
                    let mut j = Json::new();
                    j.num("t_s", s.at)
                        .raw("gateway", &usage_json(s.usage.gateway))
                        .raw("tunnel", &usage_json(s.usage.tunnel));
                    j.finish()
                })),
            );
        json.finish()
    }

    fn markdown(&self) -> String {
        let c = &self.counts;
        let mut md = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(md, "## Soak: {verdict}\n");
        let _ = writeln!(
            md,
            "Seed {} (`--seed {}`), {} s planned, {:.0} s run, {} build{}.\n",
            self.seed,
            self.seed,
            self.planned_s,
            self.elapsed_s,
            if self.profile.is_empty() {
                "unknown"
            } else {
                &self.profile
            },
            if self.commit.is_empty() {
                String::new()
            } else {
                format!(", commit {}", self.commit)
            }
        );
        let _ = writeln!(
            md,
            "Workers: {} small HTTP, {} large HTTP ({:.0}-{:.0} MiB), {} SSE, {} WebSocket.\n",
            self.mix.small,
            self.mix.large,
            mib(self.large.0 / 1024),
            mib(self.large.1 / 1024),
            self.mix.sse,
            self.mix.ws
        );
        table(&mut md, "Completed and checked", &c.ok);
        let _ = writeln!(md, "Checked bytes: {:.1} MiB.\n", mib(c.bytes / 1024));
        table(&mut md, "Faults injected", &self.faults());
        let _ = writeln!(
            md,
            "Restarts that exited at once and were tried again: {}.\n",
            self.start_retries
        );
        table(&mut md, "Clean errors (inside fault windows)", &c.errors);
        table(
            &mut md,
            "The same, by the fault that explains them",
            &c.by_fault,
        );
        let known =
            "Known issues outside fault windows (reported, not failed on; `--strict` fails)";
        table(&mut md, known, &c.known);
        let examples = c.examples.iter().filter(|(k, _)| k.starts_with("known "));
        for example in examples.flat_map(|(_, v)| v) {
            let _ = writeln!(md, "- {example}");
        }
        if !c.known.is_empty() {
            md.push('\n');
        }
        table(&mut md, "Failures", &c.failures);
        for d in &c.details {
            let _ = writeln!(md, "- {d}");
        }
        if !c.details.is_empty() {
            md.push('\n');
        }
        self.resources_md(&mut md);
        md
    }

    fn resources_md(&self, md: &mut String) {
        let _ = writeln!(md, "### Descriptors and RSS\n");
        let _ = writeln!(md, "Margins at a quiet point: fds within +{FD_MARGIN}, RSS within +{} MiB of the baseline.\n", RSS_MARGIN_KIB / 1024);
        let _ = writeln!(md, "| when | gateway | tunnel |\n|---|---|---|");
        let row = |md: &mut String, when: &str, p: &Pair| {
            let _ = writeln!(
                md,
                "| {when} | {} | {} |",
                usage_text(p.gateway),
                usage_text(p.tunnel)
            );
        };
        row(md, "baseline (after warm-up)", &self.baseline);
        for cy in &self.cycles {
            let mark = if cy.near { "" } else { " **not near**" };
            let when = format!(
                "after {} at {:.0}s (healthy in {:.2}s){mark}",
                cy.fault.name(),
                cy.at,
                cy.recovery_s
            );
            row(md, &when, &cy.quiet);
        }
        row(md, "max seen", &self.max_seen());
        let _ = writeln!(md, "\nRSS curve (MiB; `-` while the process was down):\n");
        let _ = writeln!(
            md,
            "| t (s) | gateway | tunnel | gateway fds | tunnel fds |\n|---|---|---|---|---|"
        );
        let step = self.samples.len().div_ceil(CURVE_ROWS).max(1);
        for s in self.samples.iter().step_by(step) {
            let rss = |u: Option<Usage>| u.map_or("-".into(), |u| format!("{:.1}", mib(u.rss_kib)));
            let fds = |u: Option<Usage>| u.map_or("-".into(), |u| u.fds.to_string());
            let u = s.usage;
            let _ = writeln!(
                md,
                "| {:.0} | {} | {} | {} | {} |",
                s.at,
                rss(u.gateway),
                rss(u.tunnel),
                fds(u.gateway),
                fds(u.tunnel)
            );
        }
    }
}

/// A two-column table of counts, or "none".
fn table<K: AsRef<str>>(md: &mut String, title: &str, counts: &BTreeMap<K, u64>) {
    let _ = writeln!(md, "### {title}\n");
    if counts.is_empty() {
        let _ = writeln!(md, "none\n");
        return;
    }
    let _ = writeln!(md, "| kind | count |\n|---|---|");
    for (k, v) in counts {
        let _ = writeln!(md, "| {} | {v} |", k.as_ref());
    }
    md.push('\n');
}
