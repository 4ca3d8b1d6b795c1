locals {
  label         = "edgecache-${var.name}"
  mesh_hostname = "edgecache-${var.name}"

  dns_record_name = var.pop_record_subdomain == "" ? var.name : "${var.name}.${var.pop_record_subdomain}"
  fqdn            = "${local.dns_record_name}.${var.dns_zone}"

  tags = tolist(distinct(concat(
    ["edgecache", "edgecache-pop", "pop-${var.name}", "region-${var.region}"],
    var.extra_tags,
  )))

  # Linode firewall rules take IPv4 and IPv6 ranges in separate lists.
  mesh_ipv4     = [for cidr in var.mesh_cidrs : cidr if !strcontains(cidr, ":")]
  mesh_ipv6     = [for cidr in var.mesh_cidrs : cidr if strcontains(cidr, ":")]
  operator_ipv4 = [for cidr in var.operator_ssh_cidrs : cidr if !strcontains(cidr, ":")]
  operator_ipv6 = [for cidr in var.operator_ssh_cidrs : cidr if strcontains(cidr, ":")]

  anywhere_ipv4 = ["0.0.0.0/0"]
  anywhere_ipv6 = ["::/0"]

  public_rules = [
    { label = "allow-http", protocol = "TCP", ports = "80", ipv4 = local.anywhere_ipv4, ipv6 = local.anywhere_ipv6 },
    { label = "allow-https", protocol = "TCP", ports = "443", ipv4 = local.anywhere_ipv4, ipv6 = local.anywhere_ipv6 },
    # Path MTU discovery breaks without ICMP "packet too big", above all over IPv6.
    { label = "allow-icmp", protocol = "ICMP", ports = null, ipv4 = local.anywhere_ipv4, ipv6 = local.anywhere_ipv6 },
  ]

  mesh_rules = [
    { label = "admin-from-mesh", protocol = "TCP", ports = tostring(var.admin_port), ipv4 = local.mesh_ipv4, ipv6 = local.mesh_ipv6 },
    { label = "ssh-from-mesh", protocol = "TCP", ports = "22", ipv4 = local.mesh_ipv4, ipv6 = local.mesh_ipv6 },
  ]

  shield_rules = var.shield_port == null ? [] : [
    { label = "shield-from-mesh", protocol = "TCP", ports = tostring(var.shield_port), ipv4 = local.mesh_ipv4, ipv6 = local.mesh_ipv6 },
  ]

  tailscale_rules = var.allow_tailscale_direct ? [
    { label = "tailscale-direct", protocol = "UDP", ports = tostring(var.tailscale_udp_port), ipv4 = local.anywhere_ipv4, ipv6 = local.anywhere_ipv6 },
  ] : []

  operator_rules = length(var.operator_ssh_cidrs) > 0 ? [
    { label = "ssh-from-operators", protocol = "TCP", ports = "22", ipv4 = local.operator_ipv4, ipv6 = local.operator_ipv6 },
  ] : []

  # Everything not listed here is dropped by the firewall's inbound policy.
  firewall_inbound_rules = [
    for rule in concat(local.public_rules, local.mesh_rules, local.shield_rules, local.tailscale_rules, local.operator_rules) :
    merge(rule, { action = "ACCEPT" })
  ]
}
