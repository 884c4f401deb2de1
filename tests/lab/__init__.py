"""The multi-host HA lab: real dhcpd failover peers in network namespaces."""
