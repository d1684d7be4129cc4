// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo boot IMAGE`: boot a kernel of the simulated machine from a saved handover image and
//! retrieve everything it holds (`luo_sim::boot_image`).

use std::path::Path;
use std::process::ExitCode;

use luo_core::KernelVersion;
use luo_schema::output::{Format, Reporter};

/// Exit 0 when every session and file was retrieved and finished, 1 when some were not,
/// 2 when the image could not be read or the kernel refused to boot from it.
pub fn run(image: &Path, kernel: KernelVersion, format: Format) -> ExitCode {
    let report = luo_core::image::Image::load(image)
        .map_err(|e| e.to_string())
        .and_then(|img| luo_sim::boot_image::boot_image(&img, kernel).map_err(|e| e.to_string()));
    match report {
        Ok(r) => {
            let mut out = Reporter::stdout(format);
            let shown = match format {
                Format::Json => out.json(&r),
                Format::Text => out.text(r.to_text()),
            };
            if let Err(e) = shown {
                eprintln!("luo boot: writing standard output: {e}");
                return ExitCode::from(2);
            }
            if r.all_retrieved() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "luo boot: {}: {e}\n  (`luo inspect {}` decodes what the image holds; \
                 `luo simulate --save-image FILE` writes a valid one)",
                image.display(),
                image.display()
            );
            ExitCode::from(2)
        }
    }
}
