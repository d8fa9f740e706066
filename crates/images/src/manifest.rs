//! The JSON documents of an image: index / manifest list, manifest, image config. Only the
//! fields Cloister uses are read; everything from a registry is checked before use (digests
//! must be sha256 hex, sizes bounded, layers of a known media type).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::reference::is_sha256_digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The `Accept` header of a manifest request.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9";

/// Largest manifest, index or config document accepted.
pub const MAX_DOCUMENT: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawDocument {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A layer's compression, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub compression: Compression,
}

/// A parsed manifest or index.
#[derive(Debug)]
pub enum Document {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Layer>,
    },
}

/// Parses a manifest or an index. `content_type` is the response's `Content-Type`, used when
/// the document does not name its own media type.
pub fn parse_document(bytes: &[u8], content_type: Option<&str>) -> Result<Document, String> {
    let raw: RawDocument = serde_json::from_slice(bytes)
        .map_err(|e| format!("the manifest is not valid JSON: {e}"))?;
    let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let media = raw.media_type.clone().or(ct).unwrap_or_default();
    if raw.schema_version != 2 {
        return Err(format!(
            "manifest schemaVersion {} is not supported (only 2: OCI and Docker v2 manifests)",
            raw.schema_version
        ));
    }
    let is_index = media == OCI_INDEX
        || media == DOCKER_LIST
        || (raw.manifests.is_some() && raw.layers.is_none());
    if is_index {
        let list = raw.manifests.unwrap_or_default();
        for d in &list {
            check_descriptor(d, "manifest")?;
        }
        return Ok(Document::Index(list));
    }
    if !media.is_empty() && media != OCI_MANIFEST && media != DOCKER_MANIFEST {
        return Err(format!("manifest media type {media:?} is not supported"));
    }
    let config = raw.config.ok_or("the manifest has no config")?;
    check_descriptor(&config, "config")?;
    if config.size > MAX_DOCUMENT {
        return Err(format!(
            "the image config is {} bytes (more than {MAX_DOCUMENT})",
            config.size
        ));
    }
    let mut layers = Vec::new();
    for l in raw.layers.unwrap_or_default() {
        check_descriptor(&l, "layer")?;
        if l.urls.as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(format!(
                "layer {} is a foreign (non-distributable) layer; those are not pulled",
                l.digest
            ));
        }
        let compression = match l.media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
            other => {
                return Err(format!(
                    "layer {} has media type {other:?}, which is not a filesystem layer",
                    l.digest
                ));
            }
        };
        layers.push(Layer {
            digest: l.digest,
            size: l.size,
            compression,
        });
    }
    if layers.len() > 256 {
        return Err(format!(
            "the manifest has {} layers (at most 256)",
            layers.len()
        ));
    }
    Ok(Document::Manifest { config, layers })
}

fn check_descriptor(d: &Descriptor, what: &str) -> Result<(), String> {
    if !is_sha256_digest(&d.digest) {
        return Err(format!(
            "{what} digest {:?} is not sha256:<64 hex>",
            d.digest.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// Picks the linux/amd64 manifest of an index (a plain `amd64` before a variant of it).
pub fn pick_platform(list: &[Descriptor]) -> Option<&Descriptor> {
    let linux_amd64 = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    list.iter()
        .filter(linux_amd64)
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.variant
                    .as_deref()
                    .is_none_or(|v| v.is_empty() || v == "v1")
            })
        })
        .or_else(|| list.iter().find(linux_amd64))
}

/// What a session runs, from the image config (`config` of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// TCP ports the image declares (`ExposedPorts` `"8080/tcp"` or `"8080"`), sorted.
    pub exposed_ports: Vec<u16>,
}

#[derive(Debug, Deserialize)]
struct RawConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RawContainerConfig>,
    #[serde(default)]
    rootfs: Option<RawRootFs>,
}

#[derive(Debug, Deserialize)]
struct RawContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "ExposedPorts", default)]
    exposed_ports: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct RawRootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The parts of an image config blob Cloister uses: the run config and the layers' diff ids.
pub fn parse_config(bytes: &[u8]) -> Result<(ImageConfig, Vec<String>), String> {
    let raw: RawConfigFile = serde_json::from_slice(bytes)
        .map_err(|e| format!("the image config is not valid JSON: {e}"))?;
    if let Some(os) = raw.os.as_deref()
        && !os.is_empty()
        && os != "linux"
    {
        return Err(format!("the image is for os {os:?}; this host runs linux"));
    }
    if let Some(arch) = raw.architecture.as_deref()
        && !arch.is_empty()
        && arch != "amd64"
    {
        return Err(format!(
            "the image is for architecture {arch:?}; this host runs amd64"
        ));
    }
    let diff_ids = raw.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    for d in &diff_ids {
        if !is_sha256_digest(d) {
            return Err(format!(
                "diff_id {:?} is not sha256:<64 hex>",
                d.chars().take(80).collect::<String>()
            ));
        }
    }
    let c = raw.config;
    let mut ports = BTreeSet::new();
    if let Some(map) = c.as_ref().and_then(|c| c.exposed_ports.as_ref()) {
        for key in map.keys() {
            let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            if proto.eq_ignore_ascii_case("tcp")
                && let Ok(p) = port.parse::<u16>()
                && p != 0
            {
                ports.insert(p);
            }
        }
    }
    let config = match c {
        Some(c) => ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
            exposed_ports: ports.into_iter().collect(),
        },
        None => ImageConfig::default(),
    };
    Ok((config, diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn manifest_and_index() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":10}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":5}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D2}","size":5}}]}}"#
        );
        match parse_document(m.as_bytes(), None).unwrap() {
            Document::Manifest { config, layers } => {
                assert_eq!(config.digest, D1);
                assert_eq!(layers[0].compression, Compression::Gzip);
                assert_eq!(layers[1].compression, Compression::Zstd);
            }
            other => panic!("{other:?}"),
        }
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        match parse_document(i.as_bytes(), Some(DOCKER_LIST)).unwrap() {
            Document::Index(list) => assert_eq!(pick_platform(&list).unwrap().digest, D2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_documents_are_refused() {
        let traversal = r#"{"schemaVersion":2,"config":{"digest":"sha256:../../../etc/passwd","size":1},"layers":[]}"#;
        assert!(parse_document(traversal.as_bytes(), Some(OCI_MANIFEST)).is_err());
        let schema1 = r#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(
            parse_document(schema1.as_bytes(), None)
                .unwrap_err()
                .contains("schemaVersion 1")
        );
        let foreign = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":1}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","size":1,"urls":["http://x"]}}]}}"#
        );
        assert!(parse_document(foreign.as_bytes(), None).is_err());
        assert!(parse_document(b"not json", None).is_err());
        let arm = br#"{"architecture":"arm64","os":"linux"}"#;
        assert!(parse_config(arm).unwrap_err().contains("arm64"));
    }

    #[test]
    fn config_fields() {
        let c = br#"{"architecture":"amd64","os":"linux","config":{"User":"65534:65534","Env":["A=1"],"Cmd":["python3","-m","http.server"],
            "WorkingDir":"/srv","ExposedPorts":{"8000/tcp":{},"53/udp":{},"9000":{}}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let (cfg, diff) = parse_config(c).unwrap();
        assert_eq!(cfg.user.as_deref(), Some("65534:65534"));
        assert_eq!(cfg.cmd, ["python3", "-m", "http.server"]);
        assert_eq!(cfg.exposed_ports, [8000, 9000]);
        assert_eq!(cfg.working_dir.as_deref(), Some("/srv"));
        assert!(diff.is_empty());
    }
}
