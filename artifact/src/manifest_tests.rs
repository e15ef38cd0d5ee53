use super::*;
use crate::format::EMPTY_CONFIG;
use sha2::{Digest, Sha256};

fn meta(format: FirmwareFormat) -> ArtifactMeta {
    ArtifactMeta {
        version: "1.4.2".into(),
        chip: "nRF52840_xxAA".into(),
        format,
        base_address: (format == FirmwareFormat::Bin).then_some(0x1000),
        title: "blinky.bin".into(),
        annotations: BTreeMap::from([(ANNOTATION_SOURCE.to_owned(), "https://x".to_owned())]),
    }
}

const LAYER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

#[test]
fn built_manifest_validates_and_matches_the_spec() {
    let bytes = build_manifest(&meta(FirmwareFormat::Bin), LAYER, 64).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["artifactType"], ARTIFACT_TYPE);
    assert_eq!(json["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(json["config"]["digest"], EMPTY_CONFIG_DIGEST);
    assert_eq!(json["config"]["size"], 2);
    assert_eq!(
        json["layers"][0]["mediaType"],
        "application/vnd.twinflash.firmware.bin"
    );
    assert_eq!(
        json["layers"][0]["annotations"][ANNOTATION_TITLE],
        "blinky.bin"
    );
    assert_eq!(json["annotations"][ANNOTATION_BASE_ADDRESS], "0x00001000");
    let a = FirmwareArtifact::from_manifest_bytes(&bytes).unwrap();
    assert_eq!(a.version, "1.4.2");
    assert_eq!(a.base_address, Some(0x1000));
    assert_eq!(a.size, 64);
    assert_eq!(a.title.as_deref(), Some("blinky.bin"));
}

#[test]
fn empty_config_digest_is_right() {
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(EMPTY_CONFIG))),
        EMPTY_CONFIG_DIGEST
    );
}

#[test]
fn invalid_metadata_is_refused_before_push() {
    let mut m = meta(FirmwareFormat::Elf);
    m.version = "v1".into();
    assert!(build_manifest(&m, LAYER, 1).is_err());
    let mut m = meta(FirmwareFormat::Elf);
    m.chip = " ".into();
    assert!(build_manifest(&m, LAYER, 1).is_err());
    let mut m = meta(FirmwareFormat::Bin);
    m.base_address = None;
    assert!(build_manifest(&m, LAYER, 1).is_err());
}

fn mutate(f: impl FnOnce(&mut serde_json::Value)) -> Result<FirmwareArtifact, ManifestError> {
    let bytes = build_manifest(&meta(FirmwareFormat::Elf), LAYER, 64).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    f(&mut json);
    FirmwareArtifact::from_manifest_bytes(&serde_json::to_vec(&json).unwrap())
}

#[test]
fn foreign_manifests_are_unsupported() {
    assert!(mutate(|_| {}).is_ok());
    for (what, f) in [
        (
            "artifact type",
            Box::new(|j: &mut serde_json::Value| j["artifactType"] = "application/x".into())
                as Box<dyn FnOnce(&mut serde_json::Value)>,
        ),
        (
            "no artifact type",
            Box::new(|j| {
                j.as_object_mut().unwrap().remove("artifactType");
            }),
        ),
        (
            "layer media type",
            Box::new(|j| j["layers"][0]["mediaType"] = "application/octet-stream".into()),
        ),
        (
            "two layers",
            Box::new(|j| {
                let l = j["layers"][0].clone();
                j["layers"].as_array_mut().unwrap().push(l);
            }),
        ),
        (
            "no layers",
            Box::new(|j| j["layers"] = serde_json::json!([])),
        ),
        (
            "no version",
            Box::new(|j| {
                j["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove(ANNOTATION_VERSION);
            }),
        ),
        (
            "no chip",
            Box::new(|j| {
                j["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove(ANNOTATION_CHIP);
            }),
        ),
        (
            "bad digest",
            Box::new(|j| j["layers"][0]["digest"] = "md5:abc".into()),
        ),
        (
            "index media type",
            Box::new(|j| j["mediaType"] = "application/vnd.oci.image.index.v1+json".into()),
        ),
        (
            "config",
            Box::new(|j| {
                j["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into()
            }),
        ),
    ] {
        let err = mutate(f).unwrap_err();
        assert_eq!(
            err.code(),
            mqtt_schema::ErrorCode::UnsupportedArtifact,
            "{what}"
        );
    }
    assert!(FirmwareArtifact::from_manifest_bytes(b"not json").is_err());
}
