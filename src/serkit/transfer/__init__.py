"""Knowledge transfer to small on-device models through a similarity graph (paper 003)."""
