"""Operations: metrics, health and HTTP, logs, systemd notify, certificates, status and explain."""
