"""The model registry: MLflow's, with Fledge's conventions on top (no Prefect here).

- A version's files are the artifacts of one MLflow run (experiment `fledge-registry`) under
  `checkpoint/`, with a sha256 manifest beside them whose own digest is a version tag.
- Roles are aliases (`champion`, `challenger`, `previous`); stages are never used.
- Release status and lineage are version tags (see `fledge.core.tags`).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry import manifest as mf
from registry.adapters import is_adapter
from registry.checkpoint import checkpoint_problems, validate_checkpoint, walk_files
from registry.errors import (
    CheckpointRefused,
    ChecksumMismatch,
    RegistryError,
    UnknownAlias,
    UnknownModel,
    UnknownVersion,
    UnservableArtifact,
)
from registry.layouts import ArtifactLayout, Layout, assemble, detect_layout
from registry.refs import ModelRef, check_alias, parse_ref
from registry.runs import RunRecorder
from fledge.core.tags import (
    REGISTRY_EXPERIMENT,
    RUN_CANDIDATE,
    RUN_KIND,
    RUN_MODEL,
    TAG_ADOPTION_RUN,
    TAG_BASE,
    TAG_FLAVOR,
    TAG_LAYOUT,
    TAG_MANIFEST,
    TAG_REGISTERED_BY,
    TAG_SIZE,
    TAG_SOURCE_PATH,
    TAG_STATUS,
    Status,
)

CHECKPOINT_ARTIFACT = "checkpoint"
ADOPTION_ARTIFACT = "adoption"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""
    run_id: str | None = None
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def status(self) -> str:
        return self.tags.get(TAG_STATUS, "")

    @property
    def adapter_base(self) -> str | None:
        """The base model version (NAME/VERSION) when this version is a LoRA adapter, else None."""
        return self.tags.get(TAG_BASE) or None

    @classmethod
    def from_mlflow(cls, mv: ModelVersion) -> "VersionInfo":
        return cls(
            name=mv.name,
            version=str(mv.version),
            aliases=tuple(sorted(mv.aliases or ())),
            tags=dict(mv.tags or {}),
            source=mv.source,
            run_id=mv.run_id,
            description=mv.description or "",
        )


def _is_not_found(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


class ModelRegistry:
    """Register, resolve, tag and materialize model versions in an MLflow registry."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        self.runs = RunRecorder(self.client, tracking_uri, artifact_root)

    # ---- lookups -------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    def _require_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException as error:
            if not _is_not_found(error):
                raise
            known = ", ".join(self.model_names()) or "none yet"
            raise UnknownModel(
                f"There is no registered model '{name}' (registered models: {known}). "
                "Register a checkpoint first with `fledge register PATH --name NAME`."
            ) from None

    def versions(self, name: str) -> list[VersionInfo]:
        self._require_model(name)
        found = self.client.search_model_versions(f"name = '{name}'")
        # Version search results do not carry aliases on every store; the model does.
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases(name).items():
            by_version.setdefault(str(version), []).append(alias)
        infos = [
            dataclasses.replace(VersionInfo.from_mlflow(mv), aliases=tuple(sorted(by_version.get(str(mv.version), []))))
            for mv in found
        ]
        return sorted(infos, key=lambda v: int(v.version))

    def get_version(self, name: str, version: str) -> VersionInfo:
        self._require_model(name)
        try:
            return VersionInfo.from_mlflow(self.client.get_model_version(name, version))
        except MlflowException as error:
            if not _is_not_found(error):
                raise
            known = ", ".join(v.version for v in self.versions(name)) or "none"
            raise UnknownVersion(
                f"Model '{name}' has no version {version} (versions: {known}). "
                f"List them with `fledge models {name}`."
            ) from None

    def aliases(self, name: str) -> dict[str, str]:
        self._require_model(name)
        # Versions are strings throughout Fledge; stores disagree on int vs str.
        return {alias: str(v) for alias, v in (self.client.get_registered_model(name).aliases or {}).items()}

    def resolve(self, ref: ModelRef | str) -> VersionInfo:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        if ref.version is not None:
            return self.get_version(ref.name, ref.version)
        aliases = self.aliases(ref.name)
        if ref.alias not in aliases:
            known = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
            raise UnknownAlias(
                f"Model '{ref.name}' has no alias '{ref.alias}' (aliases: {known}). "
                f"Set it with `fledge register ... --alias {ref.alias}` or use NAME/VERSION."
            )
        return self.get_version(ref.name, aliases[ref.alias])

    # ---- registration --------------------------------------------------------------------

    def register(
        self,
        path: Path,
        name: str,
        *,
        alias: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        supported_architectures: frozenset[str] | None = None,
        base: str | None = None,
    ) -> VersionInfo:
        """Register a checkpoint directory (or a LoRA adapter on `base`, NAME/VERSION) as a new
        version. Refuses before writing anything."""
        path = Path(path).resolve()
        if alias is not None:
            check_alias(alias)
        adapter_tags: dict[str, str] = {}
        if is_adapter(path):
            base_info = self._adapter_base(path, base)
            validate_checkpoint(path, supported_architectures, base_shapes=self._parameter_shapes(base_info))
            adapter_tags = {TAG_BASE: base_info.ref, TAG_LAYOUT: Layout.PEFT_ADAPTER.value}
        elif base is not None:
            raise CheckpointRefused(path, [f"--base is for LoRA adapters, and {path} has no adapter_config.json"])
        else:
            validate_checkpoint(path, supported_architectures)
        manifest = mf.build_manifest(path)
        digest = mf.manifest_digest(manifest)

        run_id = self.runs.start(REGISTRY_EXPERIMENT, f"register-{name}")
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        try:
            self.client.log_artifacts(run_id, str(path), CHECKPOINT_ARTIFACT)
            with tempfile.TemporaryDirectory() as tmp:
                manifest_path = Path(tmp) / mf.MANIFEST_FILE
                manifest_path.write_bytes(mf.manifest_bytes(manifest))
                self.client.log_artifact(run_id, str(manifest_path), CHECKPOINT_ARTIFACT)
            self.runs.log_params(run_id, {"model_name": name, "source_path": str(path)})
            self.runs.set_tags(run_id, {TAG_MANIFEST: digest})
            try:
                self.client.create_registered_model(name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version_tags = {
                TAG_STATUS: Status.CANDIDATE.value,
                TAG_MANIFEST: digest,
                TAG_SIZE: str(mf.total_size(manifest)),
                TAG_SOURCE_PATH: str(path),
                TAG_REGISTERED_BY: getpass.getuser(),
                **adapter_tags,
                **(tags or {}),
            }
            mv = self.client.create_model_version(
                name,
                source=f"{artifact_uri}/{CHECKPOINT_ARTIFACT}",
                run_id=run_id,
                tags=version_tags,
                description=description,
            )
            self.runs.finish(run_id)
        except BaseException:
            self.runs.finish(run_id, failed=True)
            raise
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, mv.version)
        return self.get_version(name, str(mv.version))

    def _adapter_base(self, path: Path, base: str | None) -> VersionInfo:
        if base is None:
            raise CheckpointRefused(path, ["it is a LoRA adapter: name the base model version it was trained on "
                                           "with --base NAME/VERSION"])
        info = self.resolve(base)
        if info.adapter_base:
            raise CheckpointRefused(path, [f"its base {info.ref} is itself an adapter (on {info.adapter_base}); "
                                           "name the full model it was trained on"])
        if not info.tags.get(TAG_MANIFEST):
            raise CheckpointRefused(path, [f"its base {info.ref} is not in Fledge yet; adopt it first "
                                           f"(`fledge adopt {info.ref}`)"])
        return info

    def _parameter_shapes(self, info: VersionInfo) -> dict[str, tuple[int, ...]]:
        """A full model version's parameter shapes, from its config.json alone (meta device)."""
        from registry.config_shapes import expected_shapes

        config_path = "config.json"
        if info.tags.get(TAG_ADOPTION_RUN):
            manifest = json.loads(self.runs.artifact_text(info.tags[TAG_ADOPTION_RUN], f"{ADOPTION_ARTIFACT}/{mf.MANIFEST_FILE}"))
            config_path = manifest["layout"]["served"].get("config.json", config_path)
        uri = self.client.get_model_version_download_uri(info.name, info.version)
        with tempfile.TemporaryDirectory() as tmp:
            downloaded = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{uri.rstrip('/')}/{config_path}", dst_path=tmp, tracking_uri=self.tracking_uri))
            config_dir = Path(tmp) / "config"
            config_dir.mkdir()
            downloaded.rename(config_dir / "config.json")
            return expected_shapes(config_dir)[0]

    def find_by_manifest(self, name: str, digest: str) -> VersionInfo | None:
        """The existing version of `name` with exactly these files, if any (re-registration)."""
        if name not in self.model_names():
            return None
        for version in self.versions(name):
            if version.tags.get(TAG_MANIFEST) == digest:
                return version
        return None

    def register_once(self, path: Path, name: str, **kwargs) -> tuple[VersionInfo, bool]:
        """Register unless a version with identical files exists; returns (version, created)."""
        digest = mf.manifest_digest(mf.build_manifest(Path(path).resolve()))
        existing = self.find_by_manifest(name, digest)
        if existing is not None:
            if kwargs.get("alias"):
                self.set_alias(name, kwargs["alias"], existing.version)
                existing = self.get_version(name, existing.version)
            return existing, False
        return self.register(path, name, **kwargs), True

    # ---- aliases and tags ----------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str) -> None:
        check_alias(alias)
        self.get_version(name, version)
        self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        if alias in self.aliases(name):
            self.client.delete_registered_model_alias(name, alias)

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    def set_status(self, name: str, version: str, status: Status, **extra_tags: str) -> None:
        self.set_tags(name, version, {TAG_STATUS: status.value, **extra_tags})

    # ---- materialize and adopt -------------------------------------------------------------

    def materialize(
        self, ref: ModelRef | str, cache_root: Path, supported_architectures: frozenset[str] | None = None
    ) -> Path:
        """Download a version into `cache_root/NAME/VERSION` as one Hugging Face directory, verify
        every checksum, return the dir. A version Fledge did not register is adopted first.

        The download goes to a temporary sibling and is renamed into place only once verified;
        an existing directory is re-verified (not trusted) before it is returned.
        """
        info = self.resolve(ref)
        target = cache_root / info.name / info.version
        if info.tags.get(TAG_MANIFEST) and target.is_dir():
            try:
                self._verify(info, target, supported_architectures)
                return target
            except RegistryError:
                shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{info.version}-", dir=target.parent))
        try:
            raw = self._download(info, staging / "download")
            if info.tags.get(TAG_MANIFEST):
                served = self._served_from_download(info, raw, staging / "served")
            else:
                info, served = self._adopt_download(info, raw, staging / "served", supported_architectures)
            self._verify(info, served, supported_architectures)
            served.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def adopt(self, ref: ModelRef | str, cache_root: Path,
              supported_architectures: frozenset[str] | None = None) -> tuple[VersionInfo, bool]:
        """Adopt a version Fledge did not register (validate, manifest, tags); (version, adopted now)."""
        info = self.resolve(ref)
        if info.tags.get(TAG_MANIFEST):
            return info, False
        self.materialize(info.ref, cache_root, supported_architectures)
        return self.get_version(info.name, info.version), True

    def _download(self, info: VersionInfo, destination: Path) -> Path:
        # The registry's storage location, not the version's source: a `models:/m-...` source
        # (MLflow 3 logged models) only resolves through the store that created it.
        uri = self.client.get_model_version_download_uri(info.name, info.version)
        destination.mkdir(parents=True)
        try:
            return Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(destination), tracking_uri=self.tracking_uri
            ))
        except (MlflowException, OSError) as error:
            raise RegistryError(
                f"The artifacts of {info.ref} could not be downloaded from {uri} ({error}). Check that the "
                "tracking server that stores them is running and reachable from here (MLFLOW_TRACKING_URI)."
            ) from None

    def _served_from_download(self, info: VersionInfo, raw: Path, served: Path) -> Path:
        """A version already in Fledge: its own registration is served as downloaded; an adopted
        one is checked file by file as logged, then laid out as recorded at adoption."""
        run_id = info.tags.get(TAG_ADOPTION_RUN)
        if not run_id:
            return raw
        manifest = json.loads(self.runs.artifact_text(run_id, f"{ADOPTION_ARTIFACT}/{mf.MANIFEST_FILE}"))
        if mf.manifest_digest(manifest) != info.tags.get(TAG_MANIFEST):
            raise ChecksumMismatch(info.ref, ["the adoption manifest differs from the one recorded at adoption"])
        problems = mf.verify_directory(raw, manifest, served=False)
        if problems:
            raise ChecksumMismatch(info.ref, problems)
        assemble(raw, ArtifactLayout(Layout(manifest["layout"]["layout"]), manifest["layout"]["flavor"],
                                     served=manifest["layout"]["served"]), served)
        (served / mf.MANIFEST_FILE).write_bytes(mf.manifest_bytes(manifest))
        return served

    def _adopt_download(self, info: VersionInfo, raw: Path, served: Path,
                        supported_architectures: frozenset[str] | None) -> tuple[VersionInfo, Path]:
        """Validate a downloaded version Fledge did not register, lay it out, record its manifest
        on a Fledge run and its digest, layout and flavor as version tags. Facts about files, not
        a release decision: nothing here is undone if a release of it fails later."""
        try:
            layout = detect_layout(raw)
        except UnservableArtifact as error:
            raise UnservableArtifact(f"{info.ref} ({info.source}) cannot be served: {error}.") from None
        if layout.layout is Layout.FLEDGE:
            raise ChecksumMismatch(info.ref, [f"it carries a {mf.MANIFEST_FILE} but not its {TAG_MANIFEST} tag"])
        assemble(raw, layout, served)
        base_shapes = None
        if layout.is_adapter:  # its base comes from a version tag the team sets: fledge.base=NAME/VERSION
            if not info.adapter_base:
                raise CheckpointRefused(f"{info.ref} ({info.source})", [
                    f"it is a LoRA adapter: set the version tag {TAG_BASE} to the base model version it was "
                    f"trained on (MlflowClient().set_model_version_tag('{info.name}', '{info.version}', "
                    f"'{TAG_BASE}', 'NAME/VERSION'))"])
            base_shapes = self._parameter_shapes(self._adapter_base(served, info.adapter_base))
        problems = checkpoint_problems(served, supported_architectures, base_shapes=base_shapes)
        _, leftover_links = walk_files(raw)
        if leftover_links:
            problems.insert(0, f"it holds symbolic links ({', '.join(p.relative_to(raw).as_posix() for p in leftover_links)}), "
                            "which Fledge never follows; log real files")
        if problems:
            raise CheckpointRefused(f"{info.ref} ({info.source})", problems)
        files = {layout.served[path]: entry for path, entry in mf.build_manifest(served)["files"].items()}
        files.update(mf.build_manifest(raw)["files"])  # what is logged but not served: MLmodel, conda.yaml
        manifest = {"algorithm": "sha256", "files": dict(sorted(files.items())),
                    "layout": {"layout": layout.layout.value, "flavor": layout.flavor, "task": layout.task,
                               "served": layout.served}}
        digest = mf.manifest_digest(manifest)
        run_id = self.runs.start(REGISTRY_EXPERIMENT, f"adopt-{info.name}-{info.version}",
                                 tags={RUN_KIND: "adoption", RUN_MODEL: info.name})
        try:
            self.runs.log_text(run_id, mf.MANIFEST_FILE, mf.manifest_bytes(manifest), folder=ADOPTION_ARTIFACT)
            self.runs.set_tags(run_id, {TAG_MANIFEST: digest, RUN_CANDIDATE: info.ref})
            self.runs.finish(run_id)
        except BaseException:
            self.runs.finish(run_id, failed=True)
            raise
        # The manifest tag goes last: it is what marks the version adopted.
        self.set_tags(info.name, info.version, {
            TAG_LAYOUT: layout.layout.value, TAG_FLAVOR: layout.flavor, TAG_SIZE: str(mf.total_size(manifest)),
            TAG_ADOPTION_RUN: run_id, **({} if info.status else {TAG_STATUS: Status.CANDIDATE.value}),
        })
        self.set_tags(info.name, info.version, {TAG_MANIFEST: digest})
        (served / mf.MANIFEST_FILE).write_bytes(mf.manifest_bytes(manifest))
        return self.get_version(info.name, info.version), served

    def _verify(self, info: VersionInfo, directory: Path, supported_architectures: frozenset[str] | None) -> None:
        manifest_path = directory / mf.MANIFEST_FILE
        if not manifest_path.is_file():
            raise ChecksumMismatch(info.ref, [f"{mf.MANIFEST_FILE} is missing; it was not registered by Fledge"])
        try:
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError):  # a damaged copy is re-downloaded, not a crash
            raise ChecksumMismatch(info.ref, [f"{mf.MANIFEST_FILE} is not valid JSON"]) from None
        expected_digest = info.tags.get(TAG_MANIFEST)
        if mf.manifest_digest(manifest) != expected_digest:
            raise ChecksumMismatch(info.ref, ["the manifest itself differs from the one recorded at registration"])
        problems = mf.verify_directory(directory, manifest)
        if problems:
            raise ChecksumMismatch(info.ref, problems)
        # The values and shapes were checked when the files entered Fledge; the manifest proves
        # these are those files, so only the cheap checks run again.
        validate_checkpoint(directory, supported_architectures, deep=False)
