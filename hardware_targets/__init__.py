"""Target profiles (YAML data) and the backends that measure or emulate them."""

from hardware_targets.profile import TargetProfile, available_profiles, load_profile

__all__ = ["TargetProfile", "available_profiles", "get_backend", "load_profile"]


def get_backend(profile: TargetProfile):
    """The measurement backend a profile asks for; heavy modules load only when chosen."""
    from search.errors import ProfileError

    if profile.backend == "local":
        from hardware_targets.backends.local import LocalBackend

        return LocalBackend()
    raise ProfileError(
        f"{profile.source}: backend {profile.backend!r} is not available yet; use a profile with backend 'local'."
    )
