//! Removing docker_release's builder cache volumes (`mix docker.release.clean`).
//!
//! The volumes [`crate::builder`] creates carry [`LABEL_CACHE`]`=true` and
//! [`LABEL_CACHE_PROJECT`]`=DIR` (the canonical project directory): one project's are found by
//! the second label, every project's by the first. A volume in use (a build running now) is
//! not removed, and said so.

use crate::builder::{BuilderError, LABEL_CACHE, LABEL_CACHE_PROJECT};
use crate::engine::ContainerEngine;
use crate::pipeline::{required_engine, Events, Failure};
use std::path::Path;

/// What a clean did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cleaned {
    /// Volumes removed.
    pub removed: Vec<String>,
    /// Volumes that could not be removed, with the engine's reason.
    pub kept: Vec<(String, String)>,
}

/// Remove the cache volumes of `project` (a directory, canonicalised like the builder does),
/// or of every project when `None`.
///
/// ```no_run
/// # async fn f(engine: &image_io::engine::DockerEngine) {
/// let cleaned = image_io::clean::remove_cache_volumes(engine, Some(std::path::Path::new(".")))
///     .await
///     .unwrap();
/// println!("removed {:?}", cleaned.removed);
/// # }
/// ```
pub async fn remove_cache_volumes(
    engine: &impl ContainerEngine,
    project: Option<&Path>,
) -> Result<Cleaned, BuilderError> {
    let names = match project {
        Some(dir) => {
            let dir = std::fs::canonicalize(dir).map_err(|source| BuilderError::Io {
                what: format!("cannot read the project directory {}", dir.display()),
                source,
            })?;
            engine
                .list_volumes(LABEL_CACHE_PROJECT, &dir.display().to_string())
                .await?
        }
        None => engine.list_volumes(LABEL_CACHE, "true").await?,
    };
    let mut cleaned = Cleaned::default();
    for name in names {
        match engine.remove_volume(&name).await {
            Ok(()) => cleaned.removed.push(name),
            Err(e) => cleaned.kept.push((name, e.to_string())),
        }
    }
    Ok(cleaned)
}

/// [`remove_cache_volumes`] on the engine the environment names, each request bounded by
/// `stall_timeout` of silence.
pub async fn run_clean(
    project: Option<std::path::PathBuf>,
    stall_timeout: std::time::Duration,
    events: Events,
) -> Result<Cleaned, Failure> {
    let engine =
        required_engine(&events, "removing the builder cache volumes", stall_timeout).await?;
    Ok(remove_cache_volumes(&engine, project.as_deref()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        Body, ContainerSpec, Containers, EngineError, ExecSpec, ImageInfo, LabelledContainer,
        OutputStream, StdinHold,
    };
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Volumes by name with their labels; one is in use.
    struct Volumes(
        Mutex<BTreeMap<String, BTreeMap<String, String>>>,
        &'static str,
    );

    impl Containers for Volumes {
        async fn create_container(&self, _: &ContainerSpec) -> Result<String, EngineError> {
            unreachable!()
        }
        async fn remove_container(&self, _: &str) -> Result<(), EngineError> {
            unreachable!()
        }
        fn remove_container_detached(&self, _: String) {}
        async fn list_containers(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Vec<LabelledContainer>, EngineError> {
            unreachable!()
        }
    }

    impl ContainerEngine for Volumes {
        async fn list_volumes(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
            let all = self.0.lock().unwrap();
            Ok(all
                .iter()
                .filter(|(_, l)| l.get(key).map(String::as_str) == Some(value))
                .map(|(n, _)| n.clone())
                .collect())
        }
        async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
            if name == self.1 {
                return Err(EngineError::Api {
                    action: format!("removing the cache volume {name}"),
                    message: "volume is in use".into(),
                });
            }
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
        async fn inspect_image(&self, _: &str) -> Result<Result<ImageInfo, String>, EngineError> {
            unreachable!()
        }
        async fn attach_stdin(&self, _: &str) -> Result<StdinHold, EngineError> {
            unreachable!()
        }
        async fn start_container(&self, _: &str) -> Result<(), EngineError> {
            unreachable!()
        }
        async fn upload(&self, _: &str, _: &str, _: Body) -> Result<(), EngineError> {
            unreachable!()
        }
        async fn exec(&self, _: &str, _: &ExecSpec) -> Result<(String, OutputStream), EngineError> {
            unreachable!()
        }
        async fn exec_status(&self, _: &str) -> Result<Option<i64>, EngineError> {
            unreachable!()
        }
        async fn create_volume(
            &self,
            _: &str,
            _: &BTreeMap<String, String>,
        ) -> Result<(), EngineError> {
            unreachable!()
        }
    }

    fn engine(project: &Path, busy: &'static str) -> Volumes {
        let labels = |p: &str| {
            BTreeMap::from([
                (LABEL_CACHE.to_string(), "true".to_string()),
                (LABEL_CACHE_PROJECT.to_string(), p.to_string()),
            ])
        };
        let p = project.display().to_string();
        Volumes(
            Mutex::new(BTreeMap::from([
                ("mine-build".to_string(), labels(&p)),
                ("mine-deps".to_string(), labels(&p)),
                ("other-build".to_string(), labels("/elsewhere")),
                ("unrelated".to_string(), BTreeMap::new()),
            ])),
            busy,
        )
    }

    #[tokio::test]
    async fn one_project_or_every_project_and_a_busy_volume_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().canonicalize().unwrap();
        let e = engine(&project, "mine-deps");
        // The directory is canonicalised as the builder does: a path through `..` finds them.
        let through = project.join("sub/..");
        std::fs::create_dir(project.join("sub")).unwrap();
        let c = remove_cache_volumes(&e, Some(&through)).await.unwrap();
        assert_eq!(c.removed, vec!["mine-build"]);
        assert_eq!(c.kept.len(), 1);
        assert_eq!(c.kept[0].0, "mine-deps");
        assert!(c.kept[0].1.contains("in use"), "{}", c.kept[0].1);
        let left: Vec<String> = e.0.lock().unwrap().keys().cloned().collect();
        assert_eq!(left, vec!["mine-deps", "other-build", "unrelated"]);

        let e = engine(&project, "none");
        let c = remove_cache_volumes(&e, None).await.unwrap();
        assert_eq!(c.removed, vec!["mine-build", "mine-deps", "other-build"]);
        let left: Vec<String> = e.0.lock().unwrap().keys().cloned().collect();
        assert_eq!(left, vec!["unrelated"]);
    }
}
