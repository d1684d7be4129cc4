// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Diagnostics: rustc-style reports with `file:line:col`, a snippet and a hint.
//!
//! Like serde_derive's `Ctxt`, checks push into a [`Diagnostics`] collection
//! and keep going, so one run reports every mistake; the caller fails at the
//! end if any error was recorded.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

/// Index of a loaded source file in [`Sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub usize);

/// The spec files a run loaded, kept for rendering snippets.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<(PathBuf, String)>,
}

impl Sources {
    /// Register a file's text.
    pub fn add(&mut self, path: PathBuf, text: String) -> FileId {
        self.files.push((path, text));
        FileId(self.files.len() - 1)
    }

    /// Path of a file.
    pub fn path(&self, id: FileId) -> &Path {
        &self.files[id.0].0
    }

    /// Text of a file.
    pub fn text(&self, id: FileId) -> &str {
        &self.files[id.0].1
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(id);
        let offset = text.floor_char_boundary(offset.min(text.len()));
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        (line, col)
    }
}

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Informational: true of the spec, not wrong (a PAGE_SIZE-dependent layout).
    Note,
    /// Suspicious but usable.
    Warning,
    /// The spec cannot be used.
    Error,
}

/// One finding, pointing into a spec file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// Severity.
    pub severity: Severity,
    /// Stable short code, e.g. `implicit-padding`.
    pub code: &'static str,
    /// Headline.
    pub message: String,
    /// Where, if known.
    pub file: Option<FileId>,
    /// Byte range in the file.
    pub span: Range<usize>,
    /// Label under the snippet.
    pub label: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A new diagnostic at a place.
    pub fn new(
        severity: Severity,
        code: &'static str,
        file: FileId,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity,
            code,
            message: message.into(),
            file: Some(file),
            span,
            label: String::new(),
            hint: None,
        }
    }
}

/// The collected findings of a run.
#[derive(Debug, Default)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Record a finding.
    pub fn push(&mut self, d: Diagnostic) {
        self.list.push(d);
    }

    /// Shorthand for an error.
    pub fn error(
        &mut self,
        code: &'static str,
        file: FileId,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.list
            .push(Diagnostic::new(Severity::Error, code, file, span, message));
        self.list.last_mut().expect("just pushed")
    }

    /// Shorthand for a warning.
    pub fn warning(
        &mut self,
        code: &'static str,
        file: FileId,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.list.push(Diagnostic::new(
            Severity::Warning,
            code,
            file,
            span,
            message,
        ));
        self.list.last_mut().expect("just pushed")
    }

    /// Shorthand for a note.
    pub fn note(
        &mut self,
        code: &'static str,
        file: FileId,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.list
            .push(Diagnostic::new(Severity::Note, code, file, span, message));
        self.list.last_mut().expect("just pushed")
    }

    /// Whether any error was recorded.
    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }

    /// All findings, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.list.iter()
    }

    /// Number of distinct findings of a severity (a finding repeated word for word at
    /// several places counts once, as it is shown once).
    pub fn count(&self, severity: Severity) -> usize {
        self.groups()
            .filter(|(d, _)| d.severity == severity)
            .count()
    }

    /// Each distinct finding with the later places that repeat it word for word (one
    /// mistake, e.g. a renamed struct, seen from several places).
    fn groups(&self) -> impl Iterator<Item = (&Diagnostic, Vec<&Diagnostic>)> {
        let mut index: std::collections::HashMap<(Severity, &str, &str), usize> =
            std::collections::HashMap::new();
        let mut groups: Vec<(&Diagnostic, Vec<&Diagnostic>)> = Vec::new();
        for d in &self.list {
            match index.entry((d.severity, d.code, d.message.as_str())) {
                std::collections::hash_map::Entry::Occupied(e) => groups[*e.get()].1.push(d),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(groups.len());
                    groups.push((d, Vec::new()));
                }
            }
        }
        groups.into_iter()
    }

    /// Findings at or above `min` as JSON values for tools: severity, code, message, the
    /// place (`file`, 1-based `line` and `column`), label, hint, and the other places a
    /// finding repeated word for word was seen.
    pub fn to_json(&self, sources: &Sources, min: Severity) -> Vec<serde_json::Value> {
        let place = |d: &Diagnostic| match d.file {
            Some(f) => {
                let (line, column) = sources.line_col(f, d.span.start);
                serde_json::json!({
                    "file": sources.path(f).display().to_string(),
                    "line": line,
                    "column": column,
                })
            }
            None => serde_json::Value::Null,
        };
        self.groups()
            .filter(|(d, _)| d.severity >= min)
            .map(|(d, repeats)| {
                serde_json::json!({
                    "severity": d.severity.to_string(),
                    "code": d.code,
                    "message": d.message,
                    "at": place(d),
                    "label": d.label,
                    "hint": d.hint,
                    "also_at": repeats.iter().map(|r| place(r)).collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    /// Render findings at or above `min` as plain text; a finding repeated word for word
    /// is shown once, with the other places listed.
    pub fn render(&self, sources: &Sources, min: Severity) -> String {
        let mut out = String::new();
        for (d, repeats) in self.groups().filter(|(d, _)| d.severity >= min) {
            let also: Vec<String> = repeats
                .iter()
                .map(|r| match r.file {
                    Some(f) => {
                        let (line, col) = sources.line_col(f, r.span.start);
                        format!("{}:{line}:{col}", sources.path(f).display())
                    }
                    None => "(no place)".into(),
                })
                .collect();
            out.push_str(&render_one(d, sources, &also));
            out.push_str("\n\n");
        }
        out
    }
}

/// Set a label and hint on a just-recorded diagnostic, fluently.
impl Diagnostic {
    /// In-place label.
    pub fn with_label(&mut self, label: impl Into<String>) -> &mut Self {
        self.label = label.into();
        self
    }

    /// In-place hint.
    pub fn with_hint(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hint = Some(hint.into());
        self
    }
}

fn render_one(d: &Diagnostic, sources: &Sources, also: &[String]) -> String {
    let level = match d.severity {
        Severity::Error => Level::ERROR,
        Severity::Warning => Level::WARNING,
        Severity::Note => Level::NOTE,
    };
    let title = level.primary_title(d.message.as_str()).id(d.code);
    let mut groups: Vec<Group<'_>> = Vec::new();
    match d.file {
        Some(file) => {
            let path = sources.path(file).display().to_string();
            let text = sources.text(file);
            // Spans come from byte offsets that may fall inside a character
            // (an error offset in an escaped string): widen to whole characters.
            let start = text.floor_char_boundary(d.span.start.min(text.len()));
            let end = text.ceil_char_boundary(d.span.end.min(text.len()).max(start));
            let span = start..end;
            let annotation = AnnotationKind::Primary.span(span).label(d.label.as_str());
            groups.push(title.element(Snippet::source(text).path(path).annotation(annotation)));
        }
        None => groups.push(Group::with_title(title)),
    }
    if let Some(hint) = &d.hint {
        groups.push(Group::with_title(
            Level::HELP.secondary_title(hint.as_str()),
        ));
    }
    let also = (!also.is_empty()).then(|| format!("also at {}", also.join(", ")));
    if let Some(also) = &also {
        groups.push(Group::with_title(
            Level::NOTE.secondary_title(also.as_str()),
        ));
    }
    Renderer::plain().render(&groups)
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}
