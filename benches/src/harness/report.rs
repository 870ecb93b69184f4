//! The harness's output: a JSON file with every measurement, markdown
//! tables, and the observed-bandwidth plot (SVG and PNG) in the style of
//! Fig. 5 of the seed paper: observed bandwidth (image size / wall time)
//! against ΔD for cbt, the best rsync, the full copy and the hypothetical
//! maximum of eq. (4), v = 1 / (ΔI/v_d + ΔD/v_n).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::link::LinkInfo;
use super::runners::{Case, Estimate, RunResult};

/// The machine the run took place on.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Machine {
    /// `lscpu` model name.
    pub cpu: String,
    /// `nproc`.
    pub cores: usize,
    /// MemTotal.
    pub memory: String,
    /// `uname -r`.
    pub kernel: String,
    /// `rsync --version`, first line.
    pub rsync: String,
    /// `cbt --version`.
    pub cbt: String,
    /// The workspace's commit (`git describe --always --dirty`): the cbt measured.
    pub source: String,
}

/// Link measurements made in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct LinkMeasurements {
    /// Zero bytes sent by the full-copy tool to measure v_n.
    pub rate_probe_bytes: u64,
    /// Their wall time.
    pub rate_probe_s: f64,
    /// Bytes the link counters saw for them.
    pub rate_probe_wire_bytes: u64,
    /// v_n, MiB/s.
    pub v_n_mib_s: f64,
    /// Application-level round trips through the relay, ms.
    pub rtt_samples_ms: Vec<f64>,
    /// Their median.
    pub rtt_median_ms: f64,
    /// `dd iflag=direct` read of a non-sparse image, MiB/s.
    pub v_d_disk_mib_s: f64,
    /// `dd` read of the same image from the page cache, MiB/s.
    pub v_d_cache_mib_s: f64,
    /// Which of the two eq. (4) uses: "disk" or "cache".
    pub v_d_used: String,
    /// The v_d eq. (4) uses, MiB/s.
    pub v_d_mib_s: f64,
}

/// One case's results.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// `cbt estimate` of the case.
    pub estimate: Option<Estimate>,
    /// Every transfer.
    pub runs: Vec<RunResult>,
    /// Eq. (4) with the measured ΔD, MiB/s.
    pub max_mib_s: Option<f64>,
    /// Label of the fastest verified rsync run.
    pub best_rsync: Option<String>,
    /// cbt's observed bandwidth / the best rsync's.
    pub cbt_over_rsync: Option<f64>,
    /// cbt's observed bandwidth / eq. (4).
    pub cbt_over_max: Option<f64>,
    /// Why the case could not run, if it could not.
    pub error: Option<String>,
}

impl CaseResult {
    /// The verified run of `tool`, if any.
    pub fn run(&self, tool: &str) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.tool == tool && r.verified)
    }

    /// The fastest verified rsync run.
    pub fn best_rsync_run(&self) -> Option<&RunResult> {
        self.runs
            .iter()
            .filter(|r| r.tool.starts_with("rsync") && r.verified)
            .min_by(|a, b| a.wall_s.total_cmp(&b.wall_s))
    }

    /// Fills in the derived fields.
    pub fn summarize(&mut self, v_d: f64, v_n: f64) {
        if let Some(e) = &self.estimate {
            self.max_mib_s = Some(eq4(e.delta_d, v_d, v_n));
        }
        let cbt = self.run("cbt").map(|r| r.observed_mib_s);
        let rs = self.best_rsync_run().map(|r| (r.tool.clone(), r.observed_mib_s));
        self.best_rsync = rs.as_ref().map(|r| r.0.clone());
        self.cbt_over_rsync = cbt.zip(rs.map(|r| r.1)).map(|(c, r)| c / r);
        self.cbt_over_max = cbt.zip(self.max_mib_s).map(|(c, m)| c / m);
    }
}

/// Everything one run of the harness measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// UTC start time.
    pub started: String,
    /// Total duration, s.
    pub duration_s: f64,
    /// Quick mode.
    pub quick: bool,
    /// The machine.
    pub machine: Machine,
    /// The link.
    pub link: LinkInfo,
    /// Link and disk measurements.
    pub measured: LinkMeasurements,
    /// 1-minute load average before and after.
    pub load: (f64, f64),
    /// Per case.
    pub cases: Vec<CaseResult>,
    /// Things the reader must know (skipped cases, loopback, ...).
    pub notes: Vec<String>,
}

/// Eq. (4): the hypothetical maximal observed bandwidth.
pub fn eq4(delta_d: f64, v_d: f64, v_n: f64) -> f64 {
    1.0 / ((1.0 - delta_d) / v_d + delta_d / v_n)
}

fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".into()
    }
}

fn f2(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "–".into())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn side(u: &Option<super::proc::Usage>) -> String {
    u.map(|u| format!("{:.2} s / {:.0} MiB", u.cpu_s(), u.max_rss_kib as f64 / 1024.0))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    /// The markdown tables.
    pub fn markdown(&self) -> String {
        let m = &self.measured;
        let mut s = String::new();
        let _ = writeln!(s, "Link: {}.", self.link.kind);
        let _ = writeln!(
            s,
            "v_n = **{:.2} MiB/s** (full copy of {} MiB of zeros: {:.2} s, {:.1} MiB on the wire); RTT through the relay: median **{:.1} ms** over {} round trips (min {:.1}, max {:.1}); v_d = **{:.0} MiB/s** ({} read: `dd bs=1M{}`; the other read: {:.0} MiB/s). Load average {:.2} before, {:.2} after.\n",
            m.v_n_mib_s,
            mib(m.rate_probe_bytes),
            m.rate_probe_s,
            mib(m.rate_probe_wire_bytes),
            m.rtt_median_ms,
            m.rtt_samples_ms.len(),
            m.rtt_samples_ms.iter().copied().fold(f64::INFINITY, f64::min),
            m.rtt_samples_ms.iter().copied().fold(0.0, f64::max),
            m.v_d_mib_s,
            m.v_d_used,
            if m.v_d_used == "disk" { " iflag=direct" } else { "" },
            if m.v_d_used == "disk" { m.v_d_cache_mib_s } else { m.v_d_disk_mib_s },
            self.load.0,
            self.load.1
        );
        let _ = writeln!(s, "| Case | Image MiB | ΔD nominal | ΔD measured | Full copy MiB/s | Best rsync MiB/s | cbt MiB/s | Max, eq. (4) MiB/s | cbt / rsync | cbt / max |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in &self.cases {
            let size = c
                .estimate
                .as_ref()
                .map(|e| format!("{:.0}", mib(e.image_bytes)))
                .unwrap_or_else(|| "–".into());
            let dd = c
                .estimate
                .as_ref()
                .map(|e| format!("{:.3}", e.delta_d))
                .unwrap_or_else(|| "–".into());
            let rs = c
                .best_rsync_run()
                .map(|r| format!("{} (`{}`)", f1(r.observed_mib_s), r.tool))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | **{}** | {} | **{}** | {} |",
                c.case.name,
                size,
                c.case
                    .delta_nominal
                    .map(|d| format!("{d}"))
                    .unwrap_or_else(|| "–".into()),
                dd,
                c.run("full copy")
                    .map(|r| f1(r.observed_mib_s))
                    .unwrap_or_else(|| "–".into()),
                rs,
                c.run("cbt")
                    .map(|r| f1(r.observed_mib_s))
                    .unwrap_or_else(|| "–".into()),
                c.max_mib_s.map(f1).unwrap_or_else(|| "–".into()),
                f2(c.cbt_over_rsync),
                f2(c.cbt_over_max)
            );
        }
        let _ = writeln!(s, "\nEvery run (CPU = user + system seconds; RSS = peak resident set; both from `wait4` through `/usr/bin/time`, sender on A, receiver on B):\n");
        let _ = writeln!(s, "| Case | Tool | Wall s | Observed MiB/s | Wire MiB | Real MiB/s | Sender CPU / RSS | Receiver CPU / RSS | Basis copy s (untimed) | Verified |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---|---:|---|");
        for c in &self.cases {
            if let Some(e) = &c.error {
                let _ = writeln!(
                    s,
                    "| {} | (case skipped: {}) | | | | | | | | |",
                    c.case.name,
                    e.replace('\n', " ")
                );
            }
            for r in &c.runs {
                let _ = writeln!(
                    s,
                    "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.case.name,
                    r.tool,
                    if r.wall_s.is_finite() {
                        format!("{:.2}", r.wall_s)
                    } else {
                        "–".into()
                    },
                    f1(r.observed_mib_s),
                    f1(mib(r.wire_bytes)),
                    f1(r.real_mib_s),
                    side(&r.sender),
                    side(&r.receiver),
                    r.basis_copy_s.map(|t| format!("{t:.2}")).unwrap_or_default(),
                    if r.verified {
                        "yes".to_string()
                    } else {
                        format!(
                            "**no**: {}",
                            r.error
                                .clone()
                                .unwrap_or_default()
                                .replace('\n', " ")
                                .replace('|', "/")
                        )
                    }
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Writes the SVG and PNG plots. Plotters measures text with a
    /// TrueType font (DejaVu Sans); without one no plot is drawn and the
    /// returned note says so.
    pub fn plot(&self, svg: &Path, png: &Path) -> io::Result<Option<String>> {
        let font = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
        ]
        .iter()
        .find_map(|p| std::fs::read(p).ok());
        let Some(font) = font else {
            return Ok(Some(
                "no DejaVuSans.ttf (Debian: apt-get install fonts-dejavu-core): plot not drawn".into(),
            ));
        };
        // Registered once per process; plotters keeps a `'static` reference.
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .map_err(|_| io::Error::other("cannot load DejaVuSans.ttf"))?;
        draw(self, SVGBackend::new(svg, (900, 600)).into_drawing_area())
            .map_err(|e| io::Error::other(format!("{}: {e}", svg.display())))?;
        draw(self, BitMapBackend::new(png, (900, 600)).into_drawing_area())
            .map_err(|e| io::Error::other(format!("{}: {e}", png.display())))?;
        Ok(None)
    }
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;
/// Picks one tool's observed bandwidth out of a case.
type Pick = Box<dyn Fn(&CaseResult) -> Option<f64>>;

fn draw<B: DrawingBackend>(r: &Report, area: DrawingArea<B, plotters::coord::Shift>) -> DrawResult
where
    B::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let m = &r.measured;
    let syn: Vec<&CaseResult> = r
        .cases
        .iter()
        .filter(|c| c.case.group == "synthetic" && c.estimate.is_some())
        .collect();
    let deb: Vec<&CaseResult> = r
        .cases
        .iter()
        .filter(|c| c.case.group != "synthetic" && c.estimate.is_some())
        .collect();
    let dd = |c: &CaseResult| c.estimate.as_ref().map(|e| e.delta_d).unwrap_or(0.0);
    let mut ymax = m.v_d_mib_s.max(m.v_n_mib_s);
    let mut ymin = m.v_n_mib_s;
    for c in r.cases.iter() {
        for run in c.runs.iter().filter(|x| x.verified) {
            ymax = ymax.max(run.observed_mib_s);
            ymin = ymin.min(run.observed_mib_s);
        }
    }
    let title = format!(
        "Observed bandwidth vs ΔD ({}; v_n {:.1} MiB/s, RTT {:.0} ms, v_d {:.0} MiB/s)",
        if r.link.rate_bit_s.is_some() {
            "emulated link"
        } else {
            "loopback"
        },
        m.v_n_mib_s,
        m.rtt_median_ms,
        m.v_d_mib_s
    );
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0f64..1.0f64, ((ymin * 0.5).max(0.1)..ymax * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("ΔD (fraction of the image that must cross the link)")
        .y_desc("observed bandwidth, MiB/s (image size / wall)")
        .label_style(("sans-serif", 14))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    let curve: Vec<(f64, f64)> = (0..=100)
        .map(|i| i as f64 / 100.0)
        .map(|x| (x, eq4(x, m.v_d_mib_s, m.v_n_mib_s)))
        .collect();
    chart
        .draw_series(LineSeries::new(curve, BLACK.stroke_width(2)))?
        .label("hypothetical maximum, eq. (4)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    let series = |tool: &dyn Fn(&CaseResult) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = syn.iter().filter_map(|c| tool(c).map(|y| (dd(c), y))).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let lines: [(&str, RGBColor, Pick); 3] = [
        (
            "cbt",
            RGBColor(0, 114, 178),
            Box::new(|c: &CaseResult| c.run("cbt").map(|r| r.observed_mib_s)),
        ),
        (
            "best rsync",
            RGBColor(213, 94, 0),
            Box::new(|c: &CaseResult| c.best_rsync_run().map(|r| r.observed_mib_s)),
        ),
        (
            "full copy",
            RGBColor(120, 120, 120),
            Box::new(|c: &CaseResult| c.run("full copy").map(|r| r.observed_mib_s)),
        ),
    ];
    for (label, color, f) in lines.iter() {
        let pts = series(f.as_ref());
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(format!("{label} (synthetic pairs)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(move |p| Circle::new(p, 4, color.filled())))?;
    }
    if !deb.is_empty() {
        let blue = RGBColor(0, 114, 178);
        let orange = RGBColor(213, 94, 0);
        chart
            .draw_series(deb.iter().filter_map(|c| {
                c.run("cbt")
                    .map(|r| TriangleMarker::new((dd(c), r.observed_mib_s), 7, blue.filled()))
            }))?
            .label("cbt (Debian images)")
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, blue.filled()));
        chart
            .draw_series(deb.iter().filter_map(|c| {
                c.best_rsync_run()
                    .map(|r| TriangleMarker::new((dd(c), r.observed_mib_s), 7, orange.stroke_width(2)))
            }))?
            .label("best rsync (Debian images)")
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, orange.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    area.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq4_endpoints() {
        assert!((eq4(0.0, 100.0, 10.0) - 100.0).abs() < 1e-9);
        assert!((eq4(1.0, 100.0, 10.0) - 10.0).abs() < 1e-9);
        // Halfway: the harmonic mean.
        assert!((eq4(0.5, 30.0, 10.0) - 15.0).abs() < 1e-9);
    }
}
