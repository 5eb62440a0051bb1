"""Plugin descriptor for the customer-service app (cheap to import: the CLI reads it for --help)."""

from core.plugins import AppPlugin

PLUGIN = AppPlugin(
    name="customer-service",
    mount="/customer-service",
    summary="Bank contact centre: ASR, PII redaction, emotion, intent, replies",
    create_app="apps.customer_service.api:create_app",
    cli="apps.customer_service.cli",
    encoders="apps.customer_service.encoders",
)
