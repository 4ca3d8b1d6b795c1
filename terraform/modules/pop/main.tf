module "settings" {
  source = "../pop_settings"

  name                   = var.name
  region                 = var.region
  instance_type          = var.instance_type
  image                  = var.image
  authorized_keys        = var.authorized_keys
  dns_zone               = var.dns_zone
  pop_record_subdomain   = var.pop_record_subdomain
  dns_ttl                = var.dns_ttl
  mesh_cidrs             = var.mesh_cidrs
  operator_ssh_cidrs     = var.operator_ssh_cidrs
  admin_port             = var.admin_port
  shield_port            = var.shield_port
  allow_tailscale_direct = var.allow_tailscale_direct
  tailscale_udp_port     = var.tailscale_udp_port
  extra_tags             = var.extra_tags
}

# No root_pass: the provider then sets a random one it does not keep, and login is by key only.
resource "linode_instance" "pop" {
  label           = module.settings.instance.label
  region          = module.settings.instance.region
  type            = module.settings.instance.type
  image           = module.settings.instance.image
  authorized_keys = module.settings.instance.authorized_keys
  tags            = module.settings.instance.tags

  dynamic "metadata" {
    for_each = var.user_data == null ? [] : [var.user_data]
    content {
      user_data = base64encode(metadata.value)
    }
  }
}

resource "linode_firewall" "pop" {
  label = module.settings.firewall.label
  tags  = module.settings.tags

  # Only the rules below let traffic in.
  inbound_policy = "DROP"
  #checkov:skip=CKV_LIN_6:A PoP reaches the core over the mesh and also object stores, package mirrors and ACME servers whose addresses are not fixed, so outbound traffic is not restricted.
  outbound_policy = "ACCEPT"

  dynamic "inbound" {
    for_each = module.settings.firewall.inbound_rules
    content {
      label    = inbound.value.label
      action   = inbound.value.action
      protocol = inbound.value.protocol
      ports    = inbound.value.ports
      # Linode rejects an empty address list, so an unused family is left out.
      ipv4 = length(inbound.value.ipv4) > 0 ? inbound.value.ipv4 : null
      ipv6 = length(inbound.value.ipv6) > 0 ? inbound.value.ipv6 : null
    }
  }

  linodes = [linode_instance.pop.id]
}

# The PoP's own name. The geo-routed public name is not here: Linode DNS cannot answer by
# location, so a geo DNS service serves it, with these per-PoP names as its pool.
resource "linode_domain_record" "pop_ipv4" {
  domain_id   = var.dns_zone_id
  name        = module.settings.dns.record_name
  record_type = "A"
  target      = linode_instance.pop.ip_address
  ttl_sec     = module.settings.dns.ttl
}

resource "linode_domain_record" "pop_ipv6" {
  count = var.publish_ipv6 ? 1 : 0

  domain_id   = var.dns_zone_id
  name        = module.settings.dns.record_name
  record_type = "AAAA"
  # The provider reports the SLAAC address with its /128 prefix length.
  target  = split("/", linode_instance.pop.ipv6)[0]
  ttl_sec = module.settings.dns.ttl
}
