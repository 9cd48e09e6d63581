"""Target profiles (YAML data) and the backends that measure or emulate them."""

from hardware_targets.profile import TargetProfile, available_profiles, load_profile, same_profile

__all__ = ["TargetProfile", "available_profiles", "get_backend", "load_profile", "same_profile"]


def get_backend(profile: TargetProfile, runs_dir=None):
    """The backend a profile asks for; each module loads only when chosen. An emulated profile applies the
    calibration stored under ``runs_dir`` when one is valid for it."""
    if profile.backend == "local":
        from hardware_targets.backends.local import LocalBackend

        return LocalBackend(profile)
    if profile.backend == "remote":
        from hardware_targets.backends.remote import RemoteBackend

        return RemoteBackend(profile)
    from hardware_targets.backends.emulated import EmulatedBackend
    from hardware_targets.calibration import load_calibration

    return EmulatedBackend(profile, load_calibration(profile, runs_dir) if runs_dir else None)
