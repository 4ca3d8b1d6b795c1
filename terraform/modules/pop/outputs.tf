output "name" {
  description = "The PoP's fleet name."
  value       = var.name
}

output "region" {
  description = "The Linode region the PoP runs in."
  value       = var.region
}

output "instance_id" {
  description = "The Linode id of the PoP's instance."
  value       = linode_instance.pop.id
}

output "firewall_id" {
  description = "The id of the PoP's Linode firewall."
  value       = linode_firewall.pop.id
}

output "public_ipv4" {
  description = "The PoP's public IPv4 address."
  value       = linode_instance.pop.ip_address
}

output "public_ipv6" {
  description = "The PoP's public IPv6 address, without prefix length."
  value       = split("/", linode_instance.pop.ipv6)[0]
}

output "mesh_hostname" {
  description = "The PoP's host name on the mesh (its Tailscale node's name, set by Ansible)."
  value       = module.settings.mesh_hostname
}

output "fqdn" {
  description = "The PoP's own DNS name; a member of the geo-routed name's pool."
  value       = module.settings.dns.fqdn
}
