//! `memex embed`: texts from arguments, a file or stdin → JSON lines.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memex::embed::MiniLmEmbedder;
use serde::Serialize;

use super::GlobalArgs;

/// Input format of `--input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// One text per line.
    Text,
    /// One JSON object per line with a string field `text`.
    Jsonl,
}

/// Arguments of `memex embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Texts to embed (ignored when --input is given).
    pub texts: Vec<String>,
    /// Read texts from FILE (`-` for stdin).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Input format; default: jsonl for files ending in .jsonl or .ndjson, text otherwise.
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// Most texts per forward pass (1 to 1024).
    #[arg(long, default_value_t = 32, value_parser = super::counts::bounded(1, 1_024))]
    pub batch_size: usize,
}

#[derive(Serialize)]
struct OutLine<'a> {
    text: &'a str,
    embedding: &'a [f32],
    n_tokens: usize,
}

/// Texts are embedded and written in chunks of this many lines.
const CHUNK: usize = 256;
/// Inputs longer than this show a progress bar (on a terminal).
const PROGRESS_THRESHOLD: u64 = 300;
/// Longest input line (4 MiB; a text is embedded from its first 256 tokens anyway): a file
/// with no newline, such as `/dev/zero`, is an error instead of unbounded memory.
const MAX_LINE_BYTES: u64 = 4 * 1024 * 1024;

pub fn run(g: &GlobalArgs, a: EmbedArgs) -> anyhow::Result<ExitCode> {
    let mut opts = g.embedder_options()?;
    opts.max_batch = a.batch_size.max(1);
    let embedder = MiniLmEmbedder::load(&g.model_dir(), opts)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());

    let Some(input) = a.input else {
        if a.texts.is_empty() {
            anyhow::bail!("nothing to embed: give TEXT arguments or --input FILE (- for stdin)");
        }
        let refs: Vec<&str> = a.texts.iter().map(String::as_str).collect();
        emit(&embedder, &refs, &mut out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    };

    let format = a.format.unwrap_or_else(|| {
        let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext.eq_ignore_ascii_case("jsonl") || ext.eq_ignore_ascii_case("ndjson") {
            InputFormat::Jsonl
        } else {
            InputFormat::Text
        }
    });
    let (reader, total): (Box<dyn BufRead>, Option<u64>) = if input.as_os_str() == "-" {
        (Box::new(BufReader::new(io::stdin())), None)
    } else {
        let file =
            File::open(&input).with_context(|| format!("cannot open {}", input.display()))?;
        (Box::new(BufReader::new(file)), count_lines(&input))
    };
    let progress = progress_bar(total);
    let source = if input.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        input.display().to_string()
    };

    let mut pending: Vec<String> = Vec::with_capacity(CHUNK);
    let result = read_texts(reader, format, &source, |text| {
        pending.push(text);
        if pending.len() >= CHUNK {
            flush_pending(&embedder, &mut pending, &mut out, &progress)?;
        }
        Ok(())
    });
    // Whatever happened, every good line read before the failure is embedded and written.
    flush_pending(&embedder, &mut pending, &mut out, &progress)?;
    out.flush()?;
    progress.finish_and_clear();
    result?;
    Ok(ExitCode::SUCCESS)
}

fn flush_pending(
    embedder: &MiniLmEmbedder,
    pending: &mut Vec<String>,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
    emit(embedder, &refs, out)?;
    out.flush()?;
    progress.inc(pending.len() as u64);
    if progress.is_hidden()
        && io::stderr().is_terminal()
        && progress.position() > PROGRESS_THRESHOLD
    {
        progress.set_draw_target(ProgressDrawTarget::stderr());
    }
    pending.clear();
    Ok(())
}

fn emit(embedder: &MiniLmEmbedder, texts: &[&str], out: &mut impl Write) -> anyhow::Result<()> {
    let embedded = embedder.embed_detailed(texts)?;
    for (text, e) in texts.iter().zip(&embedded) {
        let line = OutLine {
            text,
            embedding: &e.vector,
            n_tokens: e.n_tokens,
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads texts line by line, calling `sink` for each; stops at the first bad line with an error
/// naming it.
fn read_texts(
    mut reader: impl BufRead,
    format: InputFormat,
    source: &str,
    mut sink: impl FnMut(String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {source} after line {line_no}"))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if n as u64 > MAX_LINE_BYTES {
            anyhow::bail!(
                "{source}: line {line_no} is longer than {} MiB; lines before it were embedded",
                MAX_LINE_BYTES >> 20
            );
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let line = std::str::from_utf8(&buf).map_err(|e| {
            anyhow::anyhow!(
                "{source}: line {line_no} is not valid UTF-8 (bad byte at column {}); lines before it were embedded",
                e.valid_up_to() + 1
            )
        })?;
        match format {
            InputFormat::Text => sink(line.to_string())?,
            InputFormat::Jsonl => {
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    anyhow::anyhow!("{source}: line {line_no} is not valid JSON ({e}); lines before it were embedded")
                })?;
                match value.get("text") {
                    Some(serde_json::Value::String(s)) => sink(s.clone())?,
                    Some(_) => anyhow::bail!(
                        "{source}: line {line_no} has a \"text\" field that is not a string; lines before it were embedded"
                    ),
                    None => anyhow::bail!(
                        "{source}: line {line_no} has no \"text\" field; lines before it were embedded"
                    ),
                }
            }
        }
    }
}

/// Lines of a regular file, for the progress bar; `None` for anything else (a FIFO or device
/// is read once, by the embedding itself). Counts newlines in fixed-size blocks, so a file
/// with endless lines costs no memory.
fn count_lines(path: &std::path::Path) -> Option<u64> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut n, mut last) = (0u64, b'\n');
    loop {
        let got = file.read(&mut buf).ok()?;
        if got == 0 {
            break;
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[got - 1];
    }
    Some(n + u64::from(last != b'\n'))
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
    let style = match total {
        Some(_) => ProgressStyle::with_template(
            "{spinner} embedding {pos}/{len} texts [{bar:30}] {per_sec} ETA {eta}",
        ),
        None => ProgressStyle::with_template("{spinner} embedding {pos} texts {per_sec}"),
    };
    if let Ok(style) = style {
        pb.set_style(style.progress_chars("=> "));
    }
    if io::stderr().is_terminal() && total.is_some_and(|t| t > PROGRESS_THRESHOLD) {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    }
    pb
}
