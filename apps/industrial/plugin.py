"""Plugin descriptor for the industrial app (cheap to import: the CLI reads it for --help)."""

from core.plugins import AppPlugin

PLUGIN = AppPlugin(
    name="industrial",
    mount="/industrial",
    summary="Factory QC: PCB defects + machine vibration -> pass/fail per board",
    create_app="apps.industrial.api:create_app",
    cli="apps.industrial.cli",
    encoders="apps.industrial.encoders",
)
