"""Which trl is installed, and whether fastgrpo supports it."""

from __future__ import annotations

from packaging.version import Version

from fastgrpo import env

MIN_TRL = Version("1.10")
MAX_TRL_EXCLUSIVE = Version("2")
SUPPORTED_RANGE = f">={MIN_TRL},<{MAX_TRL_EXCLUSIVE}"
FUSED_HEAD_TRL = Version("1.15")  # from here on trl has `add_fused_lm_head` and scores through `fused_lm_head=True`
BACKENDS = ("auto", "triton", "torch")
BACKEND_ENV = "FASTGRPO_BACKEND"


def installed_trl_version() -> Version:
    import trl

    raw = getattr(trl, "__version__", "unknown")
    try:
        return Version(raw)
    except Exception as err:  # packaging raises InvalidVersion
        raise RuntimeError(
            f"fastgrpo could not read the installed trl's version ({raw!r}); it supports trl {SUPPORTED_RANGE}"
        ) from err


def check_trl_version(version: Version | None = None) -> Version:
    """Raise a RuntimeError naming the installed and the supported versions when trl is out of range."""
    version = installed_trl_version() if version is None else version
    base = Version(version.base_version)
    if not (MIN_TRL <= base < MAX_TRL_EXCLUSIVE):
        raise RuntimeError(
            f"fastgrpo's trl integration supports trl {SUPPORTED_RANGE}, but trl {version} is installed. "
            f'Install a supported release, e.g. `pip install "trl{SUPPORTED_RANGE}"`.'
        )
    return version


def trl_has_fused_head(version: Version | None = None) -> bool:
    version = installed_trl_version() if version is None else version
    return Version(version.base_version) >= FUSED_HEAD_TRL


def resolve_backend_choice(backend: str | None) -> str:
    """The kernel backend the trainer uses: the argument, else $FASTGRPO_BACKEND, else "auto"; validated."""
    source = "fastgrpo_backend"
    if backend is None:
        from_env = env.get(BACKEND_ENV)
        backend = from_env or "auto"
        source = f"${BACKEND_ENV}" if from_env else "default"
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    return backend
