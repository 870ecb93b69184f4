//! The harness's output: a JSON file with every measurement, markdown
//! tables, and the observed-bandwidth plot (SVG and PNG) in the style of
//! Fig. 5 of the seed paper: observed bandwidth (image size / wall time)
//! against ΔD for cbt (warm and cold digest index), the best rsync, the
//! full copy and the hypothetical maximum of eq. (4),
//! v = 1 / (ΔI/v_d + ΔD/v_n), drawn twice: with v_d the disk's read rate
//! and with v_d the rate of a durable local copy (v_d,copy).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Serialize;

use super::link::LinkInfo;
use super::runners::{Case, CbtIndex, Estimate, RunResult};

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
    /// v_d,copy: a durable local copy of the same image on the same disk
    /// (`dd bs=1M oflag=direct conv=fsync`, source in the page cache), the
    /// median of [`Self::v_d_copy_samples_mib_s`], MiB/s.
    pub v_d_copy_mib_s: f64,
    /// Every copy measured, MiB/s.
    pub v_d_copy_samples_mib_s: Vec<f64>,
    /// Size of the image read and copied for v_d and v_d,copy, bytes.
    pub v_d_image_bytes: u64,
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
    /// Eq. (4) with the measured ΔD and v_d (disk read), MiB/s.
    pub max_mib_s: Option<f64>,
    /// Eq. (4) with the measured ΔD and v_d,copy (durable local copy), MiB/s.
    pub max_copy_mib_s: Option<f64>,
    /// Label of the fastest verified rsync run.
    pub best_rsync: Option<String>,
    /// cbt's (warm index) observed bandwidth / the best rsync's.
    pub cbt_over_rsync: Option<f64>,
    /// cbt's (warm index) observed bandwidth / eq. (4) with v_d.
    pub cbt_over_max: Option<f64>,
    /// cbt's (warm index) observed bandwidth / eq. (4) with v_d,copy.
    pub cbt_over_max_copy: Option<f64>,
    /// cbt's observed bandwidth with a cold index / the best rsync's.
    pub cbt_cold_over_rsync: Option<f64>,
    /// cbt's observed bandwidth with a cold index / eq. (4) with v_d.
    pub cbt_cold_over_max: Option<f64>,
    /// cbt's observed bandwidth with a cold index / eq. (4) with v_d,copy.
    pub cbt_cold_over_max_copy: Option<f64>,
    /// `cbt --inplace` (updating a copy of the basis) / the best rsync's.
    pub cbt_inplace_over_rsync: Option<f64>,
    /// `cbt --inplace` / eq. (4) with v_d: writing nothing it already
    /// holds, the in-place receiver is the one eq. (4) describes.
    pub cbt_inplace_over_max: Option<f64>,
    /// Why the case could not run, if it could not.
    pub error: Option<String>,
}

impl CaseResult {
    /// A case not run yet: no estimate, runs or ratios.
    pub fn new(case: Case) -> Self {
        CaseResult {
            case,
            estimate: None,
            runs: Vec::new(),
            max_mib_s: None,
            max_copy_mib_s: None,
            best_rsync: None,
            cbt_over_rsync: None,
            cbt_over_max: None,
            cbt_over_max_copy: None,
            cbt_cold_over_rsync: None,
            cbt_cold_over_max: None,
            cbt_cold_over_max_copy: None,
            cbt_inplace_over_rsync: None,
            cbt_inplace_over_max: None,
            error: None,
        }
    }

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

    /// Observed bandwidth of the verified run of `tool`.
    pub fn observed(&self, tool: &str) -> Option<f64> {
        self.run(tool).map(|r| r.observed_mib_s)
    }

    /// Fills in the derived fields from v_d, v_d,copy and v_n (MiB/s).
    pub fn summarize(&mut self, v_d: f64, v_d_copy: f64, v_n: f64) {
        if let Some(e) = &self.estimate {
            self.max_mib_s = Some(eq4(e.delta_d, v_d, v_n));
            self.max_copy_mib_s = Some(eq4(e.delta_d, v_d_copy, v_n));
        }
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let warm = self.observed(CbtIndex::Warm.label());
        let cold = self.observed(CbtIndex::Cold.label());
        let rs = self.best_rsync_run().map(|r| (r.tool.clone(), r.observed_mib_s));
        self.best_rsync = rs.as_ref().map(|r| r.0.clone());
        let rs = rs.map(|r| r.1);
        self.cbt_over_rsync = ratio(warm, rs);
        self.cbt_over_max = ratio(warm, self.max_mib_s);
        self.cbt_over_max_copy = ratio(warm, self.max_copy_mib_s);
        self.cbt_cold_over_rsync = ratio(cold, rs);
        self.cbt_cold_over_max = ratio(cold, self.max_mib_s);
        self.cbt_cold_over_max_copy = ratio(cold, self.max_copy_mib_s);
        let in_place = self.observed(CbtIndex::InPlace.label());
        self.cbt_inplace_over_rsync = ratio(in_place, rs);
        self.cbt_inplace_over_max = ratio(in_place, self.max_mib_s);
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
    /// The markdown tables, with the text that says how to read them.
    pub fn markdown(&self) -> String {
        let m = &self.measured;
        let mut s = String::new();
        let _ = writeln!(s, "Link: {}.", self.link.kind);
        let _ = writeln!(
            s,
            "v_n = **{:.2} MiB/s** (full copy of {} MiB of zeros: {:.2} s, {:.1} MiB on the wire); RTT through the relay: median **{:.1} ms** over {} round trips (min {:.1}, max {:.1}); v_d = **{:.0} MiB/s** ({} read of a {:.0} MiB non-sparse image: `dd bs=1M{}`; the other read: {:.0} MiB/s); v_d,copy = **{:.0} MiB/s** (durable local copy of the same image on the same disk: `dd bs=1M oflag=direct conv=fsync`, source in the page cache; median of {}: {}). Load average {:.2} before, {:.2} after.\n",
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
            mib(m.v_d_image_bytes),
            if m.v_d_used == "disk" { " iflag=direct" } else { "" },
            if m.v_d_used == "disk" { m.v_d_cache_mib_s } else { m.v_d_disk_mib_s },
            m.v_d_copy_mib_s,
            m.v_d_copy_samples_mib_s.len(),
            m.v_d_copy_samples_mib_s
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.load.0,
            self.load.1
        );
        let dash = || "–".to_string();
        let _ = writeln!(s, "| Case | Image MiB | ΔD nominal | ΔD measured | Full copy MiB/s | Best rsync MiB/s | cbt MiB/s | cbt cold MiB/s | Max, eq. (4) MiB/s | Max, v_d = copy MiB/s | cbt / rsync | cbt / max | cbt / max-copy |");
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &self.cases {
            let size = c
                .estimate
                .as_ref()
                .map(|e| format!("{:.0}", mib(e.image_bytes)))
                .unwrap_or_else(dash);
            let dd = c
                .estimate
                .as_ref()
                .map(|e| format!("{:.3}", e.delta_d))
                .unwrap_or_else(dash);
            let rs = c
                .best_rsync_run()
                .map(|r| format!("{} (`{}`)", f1(r.observed_mib_s), r.tool))
                .unwrap_or_else(dash);
            let bw = |tool: &str| c.observed(tool).map(f1).unwrap_or_else(dash);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | **{}** | {} | {} |",
                c.case.name,
                size,
                c.case.delta_nominal.map(|d| format!("{d}")).unwrap_or_else(dash),
                dd,
                bw("full copy"),
                rs,
                bw(CbtIndex::Warm.label()),
                bw(CbtIndex::Cold.label()),
                c.max_mib_s.map(f1).unwrap_or_else(dash),
                c.max_copy_mib_s.map(f1).unwrap_or_else(dash),
                f2(c.cbt_over_rsync),
                f2(c.cbt_over_max),
                f2(c.cbt_over_max_copy)
            );
        }
        let _ = writeln!(s, "\nHow to read this table:\n");
        let _ = writeln!(s, "- **cbt** is the receiver as a daemon (`cbt serve`) has it: with a warm digest index of its seeds. Before the timed run, `cbt --cache DIR index SEED...` ran on B (untimed, like rsync's basis copy; its duration is under \"Set-up s (untimed)\" below) in a cache directory made fresh for the case, and the receiver ran as `cbt --cache DIR recv --listen ...`, taking the seeds' digests from that cache. The sender runs with `--no-cache`: it reads and hashes the image inside the timed run in any case.");
        let _ = writeln!(s, "- **cbt cold** (`cbt (cold index)` below) is the same transfer with `--no-cache` on both sides: the receiver hashes every seed inside the timed run, after the sender connects. The difference between the two rows is the cost of indexing the seeds.");
        let _ = writeln!(s, "- **cbt / rsync**, **cbt / max** and **cbt / max-copy** use the warm row; the JSON holds the same ratios for the cold row (`cbt_cold_over_*`).");
        let _ = writeln!(s, "- **Max, eq. (4)** is the seed paper's hypothetical maximum v = 1 / (ΔI/v_d + ΔD/v_n), with ΔD measured (`cbt estimate`: non-zero blocks no seed holds), v_n the measured link rate and v_d the disk's read rate ({:.0} MiB/s): the part the destination holds costs only reading it.", m.v_d_mib_s);
        // Which of the two disk rates bounds harder depends on the disk
        // (a virtual disk with a write-back cache on the host can copy
        // faster than it reads with O_DIRECT): say what this run found.
        let which = if m.v_d_copy_mib_s < m.v_d_mib_s {
            "Here the copy is slower than the read, so this is the tighter bound where ΔD is small"
        } else {
            "Here the copy measured faster than the read (the disk's write cache absorbs it), so this bound is the looser one in this run"
        };
        let _ = writeln!(s, "- **Max, v_d = copy** is eq. (4) with v_d,copy ({:.0} MiB/s) instead: the rate of a durable local copy on the same disk. A tool that writes a new image must also write the part it already holds; at ΔD = 0 this maximum is the local copy itself. {which}. cbt writes a new image and syncs it before it exits; the full copy and rsync do not sync, and `rsync --inplace` writes only what changed into the basis copy made during the untimed set-up.", m.v_d_copy_mib_s);
        let _ = writeln!(s, "- Neither maximum models the page cache (every tool's input here is cached) or compression (cbt and rsync compress what they send), so a tool can beat either.");
        let _ = writeln!(s, "\nEvery run (CPU = user + system seconds; RSS = peak resident set; both from `wait4` through `/usr/bin/time`, sender on A, receiver on B; set-up = untimed preparation, not in the wall time: for rsync the copy of the basis to the target path, for `cbt` the warm-up of the receiver's digest cache):\n");
        let _ = writeln!(s, "| Case | Tool | Wall s | Observed MiB/s | Wire MiB | Real MiB/s | Sender CPU / RSS | Receiver CPU / RSS | Set-up s (untimed) | Verified |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---|---:|---|");
        let mut warnings = Vec::new();
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
                if r.index_reused == Some(false) {
                    warnings.push(format!(
                        "{}: the warm `cbt` run wrote to its digest cache, so its receiver hashed at least one seed inside the timed run",
                        c.case.name
                    ));
                }
                let _ = writeln!(
                    s,
                    "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.case.name,
                    r.tool,
                    if r.wall_s.is_finite() {
                        format!("{:.2}", r.wall_s)
                    } else {
                        dash()
                    },
                    f1(r.observed_mib_s),
                    f1(mib(r.wire_bytes)),
                    f1(r.real_mib_s),
                    side(&r.sender),
                    side(&r.receiver),
                    r.setup_s().map(|t| format!("{t:.2}")).unwrap_or_default(),
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
        if !self.notes.is_empty() || !warnings.is_empty() {
            let _ = writeln!(s, "\nNotes:");
            for n in self.notes.iter().chain(&warnings) {
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

/// One line of the plot over the synthetic pairs.
struct Line {
    label: &'static str,
    color: RGBColor,
    dashed: bool,
    pick: Pick,
}

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
    let mut ymax = m.v_d_mib_s.max(m.v_d_copy_mib_s).max(m.v_n_mib_s);
    let mut ymin = m.v_n_mib_s;
    for c in r.cases.iter() {
        for run in c.runs.iter().filter(|x| x.verified) {
            ymax = ymax.max(run.observed_mib_s);
            ymin = ymin.min(run.observed_mib_s);
        }
    }
    let title = format!(
        "Observed bandwidth vs ΔD ({}; v_n {:.1} MiB/s, RTT {:.0} ms, v_d {:.0}, v_d,copy {:.0} MiB/s)",
        if r.link.rate_bit_s.is_some() {
            "emulated link"
        } else {
            "loopback"
        },
        m.v_n_mib_s,
        m.rtt_median_ms,
        m.v_d_mib_s,
        m.v_d_copy_mib_s
    );
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 17))
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
    let curve = |v_d: f64| -> Vec<(f64, f64)> {
        (0..=100)
            .map(|i| i as f64 / 100.0)
            .map(|x| (x, eq4(x, v_d, m.v_n_mib_s)))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(curve(m.v_d_mib_s), BLACK.stroke_width(2)))?
        .label("maximum, eq. (4), v_d = disk read")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    let dashed = |color: RGBColor| ShapeStyle::from(&color).stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(
            curve(m.v_d_copy_mib_s),
            6,
            4,
            dashed(BLACK),
        ))?
        .label("maximum, eq. (4), v_d = durable copy")
        .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, dashed(BLACK)));
    let series = |tool: &dyn Fn(&CaseResult) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = syn.iter().filter_map(|c| tool(c).map(|y| (dd(c), y))).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let blue = RGBColor(0, 114, 178);
    let orange = RGBColor(213, 94, 0);
    let lines = [
        Line {
            label: "cbt, warm index",
            color: blue,
            dashed: false,
            pick: Box::new(|c: &CaseResult| c.observed(CbtIndex::Warm.label())),
        },
        Line {
            label: "cbt, cold index",
            color: blue,
            dashed: true,
            pick: Box::new(|c: &CaseResult| c.observed(CbtIndex::Cold.label())),
        },
        Line {
            label: "best rsync",
            color: orange,
            dashed: false,
            pick: Box::new(|c: &CaseResult| c.best_rsync_run().map(|r| r.observed_mib_s)),
        },
        Line {
            label: "full copy",
            color: RGBColor(120, 120, 120),
            dashed: false,
            pick: Box::new(|c: &CaseResult| c.observed("full copy")),
        },
    ];
    for line in &lines {
        let pts = series(line.pick.as_ref());
        let (color, label) = (line.color, format!("{} (synthetic pairs)", line.label));
        if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, dashed(color)))?
                .label(label)
                .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, dashed(color)));
            chart.draw_series(
                pts.into_iter()
                    .map(move |p| Circle::new(p, 4, color.stroke_width(2))),
            )?;
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(pts.into_iter().map(move |p| Circle::new(p, 4, color.filled())))?;
        }
    }
    if !deb.is_empty() {
        // Plotters fills a triangle whatever its style: the colour tells cbt
        // from rsync, and the cold cbt run gets a cross.
        let triangles: [(&str, Pick, RGBColor); 2] = [
            (
                "cbt, warm index (Debian images)",
                Box::new(|c: &CaseResult| c.observed(CbtIndex::Warm.label())),
                blue,
            ),
            (
                "best rsync (Debian images)",
                Box::new(|c: &CaseResult| c.best_rsync_run().map(|r| r.observed_mib_s)),
                orange,
            ),
        ];
        for (label, pick, color) in triangles {
            chart
                .draw_series(
                    deb.iter()
                        .filter_map(|c| pick(c).map(|y| TriangleMarker::new((dd(c), y), 7, color.filled()))),
                )?
                .label(label)
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, color.filled()));
        }
        chart
            .draw_series(deb.iter().filter_map(|c| {
                c.observed(CbtIndex::Cold.label())
                    .map(|y| Cross::new((dd(c), y), 6, blue.stroke_width(2)))
            }))?
            .label("cbt, cold index (Debian images)")
            .legend(move |(x, y)| Cross::new((x + 10, y), 5, blue.stroke_width(2)));
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

    fn run(tool: &str, observed_mib_s: f64) -> RunResult {
        RunResult {
            tool: tool.into(),
            wall_s: 1.0,
            wire_bytes: 0,
            sender: None,
            receiver: None,
            observed_mib_s,
            real_mib_s: 0.0,
            verified: true,
            error: None,
            tool_report: None,
            basis_copy_s: None,
            index_warmup: None,
            index_reused: None,
        }
    }

    #[test]
    fn ratios_use_the_warm_cbt_row_and_both_maxima() {
        let mut c = CaseResult {
            estimate: Some(Estimate {
                image_bytes: 1 << 20,
                bytes_missing: 0,
                delta_d: 0.0,
                best_candidate: None,
                best_found_fraction: 1.0,
            }),
            runs: vec![
                run("rsync", 50.0),
                run(CbtIndex::Cold.label(), 40.0),
                run(CbtIndex::Warm.label(), 100.0),
            ],
            ..CaseResult::new(Case {
                name: "t".into(),
                group: "synthetic".into(),
                target: "t.raw".into(),
                seeds: vec![],
                delta_nominal: Some(0.0),
                companions: vec![],
                note: String::new(),
            })
        };
        // ΔD = 0: each maximum is its v_d.
        c.summarize(400.0, 200.0, 10.0);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(c.max_mib_s, 400.0) && close(c.max_copy_mib_s, 200.0));
        assert!(close(c.cbt_over_rsync, 2.0) && close(c.cbt_cold_over_rsync, 0.8));
        assert!(close(c.cbt_over_max, 0.25) && close(c.cbt_over_max_copy, 0.5));
        assert!(close(c.cbt_cold_over_max_copy, 0.2));
    }
}
