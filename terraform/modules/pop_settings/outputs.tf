output "instance" {
  description = "Arguments for the PoP's linode_instance."
  value = {
    label           = local.label
    region          = var.region
    type            = var.instance_type
    image           = var.image
    authorized_keys = var.authorized_keys
    tags            = local.tags
  }
}

output "tags" {
  description = "Tags for every Linode resource of the PoP that takes tags."
  value       = local.tags
}

output "mesh_hostname" {
  description = "The PoP's host name on the mesh (the name its Tailscale node registers), used by the core and the other PoPs."
  value       = local.mesh_hostname
}

output "dns" {
  description = "The PoP's own DNS record: its name relative to the zone, the full name, and the TTL. The geo-routed name's pool points at fqdn."
  value = {
    zone        = var.dns_zone
    record_name = local.dns_record_name
    fqdn        = local.fqdn
    ttl         = var.dns_ttl
  }
}

output "firewall" {
  description = "Arguments for the PoP's linode_firewall: its label and the inbound rules; everything else is dropped by the firewall's inbound policy."
  value = {
    label         = local.label
    inbound_rules = local.firewall_inbound_rules
  }
}
