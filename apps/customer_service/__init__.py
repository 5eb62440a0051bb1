"""Bank contact centre: ASR, PII redaction, emotion, intent, replies."""
