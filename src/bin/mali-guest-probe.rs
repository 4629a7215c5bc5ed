//! mali-guest-probe: checks, from inside a Linux guest, that the virtio-gpu
//! device served by vhost-user-mali is visible through the DRM uAPI.
//!
//! The initramfs of the end-to-end test runs it once the virtio-gpu module is
//! loaded. It prints one line per check:
//!
//! ```text
//! PROBE PASS <name> <detail>
//! PROBE FAIL <name> <detail>
//! ```
//!
//! then `probe: N passed, M failed`, and exits with 0 only when every check
//! passed. It is built as a static executable so the initramfs needs no C
//! library.
//!
//! Checks, in order:
//! 1. the render node exists and opens;
//! 2. its driver is `virtio_gpu`;
//! 3. every `VIRTGPU_PARAM_*` can be read (values are printed);
//! 4. the device announces the DRM capset (id 6);
//! 5. GET_CAPS returns it and it describes the emulated Mali CSF GPU.
//!
//! An optional argument replaces the default render node path.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| probe::DEFAULT_RENDER_NODE.to_owned());
    let mut report = probe::Report::default();
    probe::run(&path, &mut report);
    report.finish()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("mali-guest-probe only runs on Linux");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod probe {
    use std::error::Error as _;
    use std::path::Path;
    use std::process::ExitCode;

    use vhost_user_mali::guest::{virtgpu, CapsetIdMask, Param, VirtGpu};
    use vhost_user_mali::uapi::capset::{DrmCapset, CAPSET_ID_DRM, CAPSET_VERSION};

    pub use virtgpu::DEFAULT_RENDER_NODE;

    /// The name the virtio-gpu DRM driver reports.
    const DRIVER_NAME: &str = "virtio_gpu";

    /// Tally of the checks, printing each result as it is recorded.
    #[derive(Default)]
    pub struct Report {
        passed: u32,
        failed: u32,
    }

    impl Report {
        fn pass(&mut self, name: &str, detail: impl AsRef<str>) {
            self.passed += 1;
            println!("PROBE PASS {name} {}", detail.as_ref());
        }

        fn fail(&mut self, name: &str, detail: impl AsRef<str>) {
            self.failed += 1;
            println!("PROBE FAIL {name} {}", detail.as_ref());
        }

        /// Prints the summary line and turns the tally into an exit code.
        pub fn finish(self) -> ExitCode {
            println!("probe: {} passed, {} failed", self.passed, self.failed);
            if self.failed == 0 && self.passed > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }

    /// An error with its chain of causes on one line.
    fn describe(err: &vhost_user_mali::guest::Error) -> String {
        let mut text = err.to_string();
        let mut cause = err.source();
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    /// Runs every check against the render node at `path`.
    pub fn run(path: &str, report: &mut Report) {
        if !Path::new(path).exists() {
            report.fail("render-node", format!("{path} does not exist"));
            return;
        }
        report.pass("render-node", path);

        let dev = match VirtGpu::open(path) {
            Ok(dev) => dev,
            Err(e) => {
                report.fail("open", describe(&e));
                return;
            }
        };
        report.pass("open", path);

        match dev.driver_version() {
            Ok(v) if v.name == DRIVER_NAME => report.pass(
                "driver",
                format!("{} {}.{}.{}", v.name, v.major, v.minor, v.patchlevel),
            ),
            Ok(v) => report.fail("driver", format!("{} (want {DRIVER_NAME})", v.name)),
            Err(e) => report.fail("driver", describe(&e)),
        }

        let mut capset_ids = None;
        for param in Param::ALL {
            let name = format!("getparam-{param}");
            match dev.get_param(param) {
                Ok(value) => {
                    if param == Param::SupportedCapsetIds {
                        capset_ids = Some(CapsetIdMask(value));
                    }
                    report.pass(&name, format!("value={value:#x}"));
                }
                Err(e) => report.fail(&name, describe(&e)),
            }
        }

        match capset_ids {
            Some(mask) if mask.contains(CAPSET_ID_DRM) => {
                report.pass(
                    "capset-drm",
                    format!("id {CAPSET_ID_DRM} offered (mask {mask})"),
                );
                check_drm_capset(&dev, report);
            }
            Some(mask) => report.fail(
                "capset-drm",
                format!("id {CAPSET_ID_DRM} not offered (mask {mask})"),
            ),
            None => report.fail("capset-drm", "capset id mask unavailable"),
        }
    }

    /// Reads the DRM capset and checks that it announces the Mali CSF GPU.
    fn check_drm_capset(dev: &VirtGpu, report: &mut Report) {
        let caps: DrmCapset = match dev.read_capset(CAPSET_ID_DRM, CAPSET_VERSION) {
            Ok(caps) => caps,
            Err(e) => {
                report.fail("capset-read", describe(&e));
                return;
            }
        };
        report.pass(
            "capset-read",
            format!(
                "wire_format_version={} context_type={:#x} panthor={}.{}.{}",
                caps.wire_format_version,
                caps.context_type,
                caps.version_major,
                caps.version_minor,
                caps.version_patchlevel
            ),
        );

        let detail = format!(
            "gpu_id={:#x} gpu_rev={:#x} csf_id={:#x} mmu_features={:#x} \
             shader_present={:#x} tiler_present={:#x}",
            caps.gpu_id,
            caps.gpu_rev,
            caps.csf_id,
            caps.mmu_features,
            caps.shader_present,
            caps.tiler_present
        );
        if caps.is_mali_csf() {
            report.pass("capset-mali", detail);
        } else {
            report.fail("capset-mali", format!("not a Mali CSF capset: {detail}"));
        }
    }
}
