//! The Kubernetes manifests under `deploy/kubernetes`, as tests see them: rendered by the
//! kustomize built into `kubectl` (v4 or later), parsed into JSON values, and looked up by kind,
//! name and container.
//!
//! Owns finding the renderer (`$WARDGATE_KUBECTL`, else `kubectl` on `PATH`; skip loudly, or fail
//! under `CI=true`, when there is none), rendering, and small accessors. It must never talk to a
//! cluster: `kubectl kustomize` only reads the files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::BoxError;

/// `deploy/kubernetes/<rel>` in this repository.
pub fn manifests_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(rel)
}

/// The kustomize major version `kubectl` embeds (`kubectl version --client -o json`).
fn kustomize_major(kubectl: &Path) -> Result<u32, String> {
    let output = Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", kubectl.display()))?;
    let json: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{} version: not JSON: {e}", kubectl.display()))?;
    let version = json["kustomizeVersion"].as_str().unwrap_or_default();
    version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| {
            format!(
                "{} embeds no kustomize version it will name (kustomizeVersion {version:?})",
                kubectl.display()
            )
        })
}

/// A `kubectl` whose built-in kustomize renders these kustomizations, or `None` when the test
/// should be skipped. Under `CI=true` a missing or too old one is a failure.
pub fn require_kubectl(test: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("WARDGATE_KUBECTL")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("kubectl"))
                    .find(|c| c.is_file())
            })
        });
    let problem = match &candidate {
        None => "kubectl not found (set WARDGATE_KUBECTL, see scripts/install-test-deps.sh)".into(),
        Some(path) => match kustomize_major(path) {
            Ok(major) if major >= 4 => return candidate,
            Ok(major) => format!(
                "{} embeds kustomize v{major}; these kustomizations need v4 or later \
                 (directories in `resources`, `patches` with targets)",
                path.display()
            ),
            Err(e) => e,
        },
    };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {problem} (CI=true: this fails the build)");
    }
    let bar = "!".repeat(100);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {problem}\n{bar}\n"
    );
    None
}

/// The objects one kustomization renders, in kustomize's output order.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The kustomization directory.
    pub dir: PathBuf,
    /// The YAML kustomize printed.
    pub yaml: String,
    /// Each object.
    pub objects: Vec<Value>,
}

impl Rendered {
    /// `kubectl kustomize <dir>`.
    pub fn render(kubectl: &Path, dir: &Path) -> Result<Rendered, BoxError> {
        let output = Command::new(kubectl).arg("kustomize").arg(dir).output()?;
        if !output.status.success() {
            return Err(format!(
                "kubectl kustomize {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        let yaml = String::from_utf8(output.stdout)?;
        let objects: Vec<Value> = serde_saphyr::from_multiple::<Value>(&yaml)?
            .into_iter()
            .filter(|v| !v.is_null())
            .collect();
        Ok(Rendered {
            dir: dir.to_owned(),
            yaml,
            objects,
        })
    }

    /// `(kind, name)` of every object.
    pub fn kinds_and_names(&self) -> Vec<(String, String)> {
        self.objects
            .iter()
            .map(|o| (str_at(o, "/kind").to_owned(), name_of(o).to_owned()))
            .collect()
    }

    /// The only object of `kind`.
    pub fn one(&self, kind: &str) -> Result<&Value, BoxError> {
        let mut found = self.objects.iter().filter(|o| str_at(o, "/kind") == kind);
        match (found.next(), found.next()) {
            (Some(object), None) => Ok(object),
            (None, _) => Err(format!("{}: no {kind}", self.dir.display()).into()),
            (Some(_), Some(_)) => {
                Err(format!("{}: more than one {kind}", self.dir.display()).into())
            }
        }
    }

    /// The object of `kind` named `name`.
    pub fn named(&self, kind: &str, name: &str) -> Result<&Value, BoxError> {
        self.objects
            .iter()
            .find(|o| str_at(o, "/kind") == kind && name_of(o) == name)
            .ok_or_else(|| format!("{}: no {kind} named {name}", self.dir.display()).into())
    }

    /// The ConfigMap a pod volume named `volume` refers to (the name kustomize gave it).
    pub fn config_map_of_volume(&self, volume: &str) -> Result<&Value, BoxError> {
        let pod = pod_spec(self.one("Deployment")?);
        let cm_name = pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == volume))
            .and_then(|v| v["configMap"]["name"].as_str())
            .ok_or_else(|| format!("no configMap volume named {volume}"))?;
        self.named("ConfigMap", cm_name)
    }
}

/// `metadata.name`.
pub fn name_of(object: &Value) -> &str {
    str_at(object, "/metadata/name")
}

/// The string at a JSON pointer, or "".
pub fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A Deployment's pod spec.
pub fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

/// The container named `name` of a Deployment.
pub fn container<'a>(deployment: &'a Value, name: &str) -> Result<&'a Value, BoxError> {
    pod_spec(deployment)["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .ok_or_else(|| format!("no container named {name}").into())
}

/// A container's `command` followed by its `args`.
pub fn command_line(container: &Value) -> Vec<String> {
    ["command", "args"]
        .iter()
        .flat_map(|field| container[*field].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The value of `--flag=value` (or `--flag value`) in a command line.
pub fn flag_value<'a>(command_line: &'a [String], flag: &str) -> Option<&'a str> {
    let with_eq = format!("{flag}=");
    command_line.iter().enumerate().find_map(|(i, arg)| {
        if let Some(v) = arg.strip_prefix(&with_eq) {
            Some(v)
        } else if arg == flag {
            command_line.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

/// A container's volume mounts as `(volume name, mount path)`.
pub fn mounts(container: &Value) -> Vec<(String, String)> {
    container["volumeMounts"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        str_at(m, "/name").to_owned(),
                        str_at(m, "/mountPath").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A container port by name.
pub fn container_port(container: &Value, name: &str) -> Option<u64> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}
