//! A container's changes as an image: the layer of a build's `RUN`, and
//! `docker commit`. Both go through [`crate::image::commit`].

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Engine, EngineError};
use crate::image::commit::{self, HistoryEntry, NewImage, NewLayer};
use crate::image::store::{ImageRecord, LocalImage};

/// The mount destinations of a container's spec, relative to its root:
/// the runtime made those that the image lacked, and they are not the
/// container's changes.
fn mount_points(spec: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read(spec) else {
        return Vec::new();
    };
    let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(&text) else {
        return Vec::new();
    };
    spec.mounts()
        .iter()
        .flatten()
        .map(|m| {
            m.destination()
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect()
        })
        .collect()
}

/// What `docker commit` asks for.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    /// `--change` instructions (`CMD …`, `ENV …`).
    pub changes: Vec<String>,
    /// `-m`.
    pub comment: Option<String>,
    /// `-a`.
    pub author: Option<String>,
    /// Pause the container while its files are read (the default).
    pub pause: bool,
    /// Config fields the client gave, over the container's.
    pub config: Map<String, Value>,
}

impl Engine {
    /// What container `key` changed, as a layer in the store; `None` if
    /// it changed nothing.
    pub async fn container_layer(&self, key: &str) -> Result<Option<NewLayer>, EngineError> {
        let container = self.container(key)?;
        let dir = container.dir().to_owned();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let skip = mount_points(&dir.join("bundle/config.json"));
            commit::layer_from_upper(&store, &dir.join("upper"), &skip)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map_err(EngineError::from)
    }

    /// `docker diff`: what the container changed on its image's layers.
    pub async fn changes(&self, key: &str) -> Result<Vec<(PathBuf, commit::Change)>, EngineError> {
        let container = self.container(key)?;
        let record = container.record();
        let lowers = self.store.lowers(&record.image)?;
        let dir = container.dir().to_owned();
        tokio::task::spawn_blocking(move || {
            let skip = mount_points(&dir.join("bundle/config.json"));
            commit::changes(&dir.join("upper"), &lowers, &skip)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map_err(EngineError::from)
    }

    /// `docker commit`: the container's changes on its image, with its
    /// config (and the request's) as the new image's; kept by id.
    pub async fn commit(
        &self,
        key: &str,
        request: CommitRequest,
    ) -> Result<ImageRecord, EngineError> {
        let container = self.container(key)?;
        let record = container.record();
        // The new layer is nobody's until the image is kept.
        let _adding = self.store.adding().await;
        let paused_here = request.pause && record.state.status == super::config::Status::Running;
        if paused_here {
            self.pause(key).await?;
        }
        let layer = self.container_layer(key).await;
        if paused_here {
            let _ = self.unpause(key).await;
        }
        let layer = layer?;
        // The container's config is the image's, as dockerd makes it.
        let image_config: Value =
            serde_json::from_slice(&self.store.read_blob(&record.image.config)?)
                .map_err(|e| EngineError::Internal(format!("image config: {e}")))?;
        let mut config = image_config
            .get("config")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let given = &record.config;
        if let Some(cmd) = &given.cmd {
            config.insert("Cmd".into(), serde_json::json!(cmd));
        }
        if let Some(entrypoint) = &given.entrypoint {
            config.insert("Entrypoint".into(), serde_json::json!(entrypoint));
            if given.cmd.is_none() {
                config.insert("Cmd".into(), Value::Null);
            }
        }
        if let Some(env) = given.env.as_ref().filter(|e| !e.is_empty()) {
            let mut merged: Vec<String> = config
                .get("Env")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for kv in env {
                let key = kv.split('=').next().unwrap_or(kv);
                merged.retain(|e| e.split('=').next() != Some(key));
                merged.push(kv.clone());
            }
            config.insert("Env".into(), serde_json::json!(merged));
        }
        for (field, value) in [("WorkingDir", &given.working_dir), ("User", &given.user)] {
            if !value.is_empty() {
                config.insert(field.into(), serde_json::json!(value));
            }
        }
        if let Some(labels) = given.labels.as_ref().filter(|l| !l.is_empty()) {
            let map = config
                .entry("Labels")
                .or_insert_with(|| serde_json::json!({}));
            if !map.is_object() {
                *map = serde_json::json!({});
            }
            for (k, v) in labels {
                map[k] = serde_json::json!(v);
            }
        }
        for (k, v) in request.config {
            if !v.is_null() {
                config.insert(k, v);
            }
        }
        let config = crate::build::apply_changes(config, &request.changes)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let store = self.store.clone();
        let parent = record.image.clone();
        let history = HistoryEntry {
            created_by: format!("{} {}", record.path, record.args.join(" "))
                .trim()
                .to_owned(),
            comment: request.comment,
        };
        let author = request.author;
        let made = tokio::task::spawn_blocking(move || {
            commit::commit(
                &store,
                NewImage {
                    parent: Some(&parent),
                    layer,
                    config: Value::Object(config),
                    history,
                    author,
                },
            )
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        self.store.keep(LocalImage {
            record: made.clone(),
            parent: Some(record.image.config.clone()),
            intermediate: false,
        })?;
        Ok(made)
    }
}
