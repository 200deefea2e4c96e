"""The `embedserve` command line: its verbs, and validating configs, listing plugins,
canary references and API keys (`serve` is in serve_cli, the bulk verbs in bulk.cli).

Ray and the deployments are imported only by the verbs that need them, so
`embedserve --help` and `embedserve config validate` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import yaml

from embedserve import BackendUnavailable, EmbedInput, PluginError, __version__, default_registry
from embedserve.bulk.cli import add_bulk_verbs
from embedserve.cli.ops import add_ops_verbs
from embedserve.cli.ray_auth import (
    StaleRayAddress,
)
from embedserve.cli.serve import PortInUse, add_serve_verb
from embedserve.cli.verify import add_verify_verb
from embedserve.config import ConfigError, EmbedServeConfig, load_config
from embedserve.runtime.canary import (
    CanaryConfig,
    CanaryReference,
    CanaryReferences,
    ReferenceStore,
    canary_problem,
)
from embedserve.serving.auth import ApiKey, key_sha256, new_key


def _describe_config(config: EmbedServeConfig) -> str:
    lines = []
    for model, model_config in config.models.items():
        cross = " (cross-space fallback allowed)" if model_config.allow_cross_space else ""
        lines.append(f"model {model}{cross}")
        for position, backend in enumerate(model_config.chain):
            kind = config.backends[backend].kind
            role = "primary " if position == 0 else "fallback"
            lines.append(f"  {role} {backend} ({kind}) space {config.space_id(backend)}")
    return "\n".join(lines)


def cmd_config_validate(args: argparse.Namespace) -> int:
    """Validate a config file and print its models, chains and spaces."""
    config = load_config(args.file)
    print(f"{args.file or 'bundled default config'}: valid")
    print(_describe_config(config))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins, their distributions and the backend kinds they provide."""
    registry = default_registry()
    for source in registry.plugins:
        dist = (
            f"{source.distribution} {source.version}"
            if source.distribution
            else "(no distribution)"
        )
        print(f"{source.name}: {dist}")
        for backend in registry:
            if backend.source != source:
                continue
            cls = backend.backend_class
            modalities = ",".join(m.value for m in cls.modalities)
            outputs = ",".join(o.value for o in cls.outputs)
            options = ", ".join(cls.Options.model_fields)
            print(f"  backend {backend.kind}: {cls.description}")
            print(f"    modalities: {modalities}; outputs: {outputs}")
            print(f"    options: {options or '(none)'}")
    if not registry.plugins:
        print("no plugins registered")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    """Print a new API key (once) and the entry that accepts it in a hashed-keys file."""
    key = new_key()
    entry = ApiKey(
        name=args.name,
        sha256=key_sha256(key),
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
    )
    print(f"key: {key}")
    print("# add to the keys file (server.auth.keys_file); the key itself is not stored:")
    print(yaml.safe_dump({"keys": [entry.model_dump(exclude_none=True)]}, sort_keys=False))
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    """Record (after an intended change) or check the canary references of backends,
    loading each backend in this process; returns 1 when a check fails."""
    config = load_config(args.config)
    unknown = sorted(set(args.backend or ()) - set(config.backends))
    if unknown:
        known = ", ".join(config.backends)
        raise ConfigError(f"unknown backend {', '.join(unknown)} (configured: {known})")
    # No cluster here: the pinned references and this node's cache.
    references = CanaryReferences.of(config.server.state_dir, config.server.canary, None)
    target = ReferenceStore(args.to) if getattr(args, "to", None) else _record_target(references)
    failed = False
    for name in args.backend or list(config.backends):
        backend, canary = config.backend(name), config.backends[name].canary
        try:
            backend.load()
        except BackendUnavailable as exc:
            print(f"{name}: skipped, unavailable here: {exc}")
            continue
        vectors = backend.embed_batch([EmbedInput(probe) for probe in canary.probes]).dense
        space = config.space_id(name)
        if args.canary_verb == "record":
            recorded = _record(name, target, CanaryReference.of(space, canary.probes, vectors))
            failed = not recorded or failed
        else:
            failed = not _check(name, references, space, canary, vectors) or failed
    return 1 if failed else 0


def _record_target(references: CanaryReferences) -> ReferenceStore:
    """Where `canary record` writes: the config's pinned references, else the cache."""
    return references.pinned if references.pinned is not None else references.cache


def _record(name: str, store: ReferenceStore, reference: CanaryReference) -> bool:
    if not np.isfinite(reference.vectors).all():
        print(f"{name}: NOT recorded: the probes gave non-finite values")
        return False
    print(f"{name}: reference of {reference.space_id} recorded in {store.save(reference)}")
    return True


def _check(
    name: str,
    references: CanaryReferences,
    space: str,
    canary: CanaryConfig,
    vectors: np.ndarray,
) -> bool:
    reference, origin = references.find(space, canary.probes)
    if reference is None:
        if references.strict:
            print(f"{name}: FAILED: the server would refuse it: {references.missing(space)}")
            return False
        print(f"{name}: no reference for {space} with these probes (the server records one)")
        return True
    problem = canary_problem(vectors, reference, canary.min_cosine, origin)
    print(f"{name}: {'FAILED: ' + problem if problem else 'passed'} ({space}, {origin})")
    return problem is None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `embedserve` command."""
    parser = argparse.ArgumentParser(
        prog="embedserve", description="Embedding models on Ray Serve."
    )
    parser.add_argument("--version", action="version", version=f"embedserve {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    add_serve_verb(verbs)

    config_parser = verbs.add_parser("config", help="work with config files")
    config_verbs = config_parser.add_subparsers(dest="config_verb", required=True)
    validate = config_verbs.add_parser("validate", help="validate a config file")
    validate.add_argument("file", nargs="?", help="config file (default: the bundled config)")
    validate.set_defaults(handler=cmd_config_validate)

    plugins_parser = verbs.add_parser("plugins", help="list backend plugins")
    plugins_parser.set_defaults(handler=cmd_plugins)
    add_bulk_verbs(verbs)

    canary_parser = verbs.add_parser("canary", help="record or check canary references")
    canary_verbs = canary_parser.add_subparsers(dest="canary_verb", required=True)
    for verb, text in (
        ("record", "re-record the references after an intended change (new weights, ...)"),
        ("check", "compare the backends' probe vectors with their references"),
    ):
        canary_verb = canary_verbs.add_parser(verb, help=text)
        canary_verb.add_argument("--config", help="config file (default: the bundled config)")
        canary_verb.add_argument("--backend", action="append", help="only this backend")
        if verb == "record":
            canary_verb.add_argument(
                "--to",
                help="reference folder (local path or URI; default: server.canary.references, "
                "else the state dir)",
            )
        canary_verb.set_defaults(handler=cmd_canary)

    keys_parser = verbs.add_parser("keys", help="create API keys")
    keys_verbs = keys_parser.add_subparsers(dest="keys_verb", required=True)
    new = keys_verbs.add_parser("new", help="print a new key and its hashed-keys file entry")
    new.add_argument("--name", required=True, help="who the key is for (shown in limits)")
    new.add_argument("--requests-per-minute", type=int)
    new.add_argument("--tokens-per-minute", type=int)
    new.set_defaults(handler=cmd_keys_new)
    add_ops_verbs(verbs)
    add_verify_verb(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `embedserve` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, PluginError, PortInUse, StaleRayAddress) as exc:
        print(f"embedserve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
