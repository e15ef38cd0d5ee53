//! The twinflash firmware artifact format (docs/contract.md section 2): media types and annotation keys.
//!
//! The firmware formats themselves (ELF, Intel HEX, UF2, raw binary), their detection from content and
//! the parser are in `twinflash-image`, shared with the flasher; they are re-exported here.

pub use twinflash_image::{
    FirmwareFormat, ImageError, SNIFF_LEN, check_bin, format_base_address, parse,
    parse_base_address, sniff,
};

/// Media type of the OCI image manifest that carries a firmware artifact.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The `Accept` header of a firmware manifest request: the manifest, and the index types, so that a reference to an
/// index is answered with the index and refused as one (`unsupported-artifact`), not as missing (a registry answers 404
/// to an index the client does not accept).
pub const FIRMWARE_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// `artifactType` of every twinflash firmware artifact.
pub const ARTIFACT_TYPE: &str = "application/vnd.twinflash.firmware.v1";
/// Media type of the empty config descriptor.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Content of the empty config blob.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Digest of [`EMPTY_CONFIG`].
pub const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Layer annotation: the original file name.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Manifest annotation: semver version of the firmware (required).
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
/// Manifest annotation: target chip or family (required).
pub const ANNOTATION_CHIP: &str = "io.twinflash.firmware.chip";
/// Manifest annotation: load address of a raw binary, hex (required for `bin`).
pub const ANNOTATION_BASE_ADDRESS: &str = "io.twinflash.firmware.base-address";
/// Manifest annotation: creation time (RFC 3339, optional).
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// Manifest annotation: source repository (optional).
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
/// Manifest annotation: source revision (optional).
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
/// Manifest annotation: free text (optional).
pub const ANNOTATION_DESCRIPTION: &str = "org.opencontainers.image.description";

/// Files up to this size are read whole and parsed by `twinflash push` (a larger BIN is judged
/// by its length and base address alone, see [`twinflash_image::check_bin`]).
pub const MAX_PARSED_FILE: u64 = 256 * 1024 * 1024;

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
