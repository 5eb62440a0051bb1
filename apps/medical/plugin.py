"""Plugin descriptor for the medical app (cheap to import: the CLI reads it for --help)."""

from core.plugins import AppPlugin

PLUGIN = AppPlugin(
    name="medical",
    mount="/medical",
    summary="Radiology: chest CT + report -> lung-cancer probability with heat maps",
    create_app="apps.medical.api:create_app",
    cli="apps.medical.cli",
    encoders="apps.medical.encoders",
)
