# Plans only: the module has no resources, so its outputs are known at plan time.

variables {
  name            = "fra-1"
  region          = "eu-central"
  instance_type   = "g6-standard-1"
  image           = "linode/debian12"
  authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForTests ops@example"]
  dns_zone        = "example.social"
}

run "names_labels_and_tags" {
  command = plan

  assert {
    condition     = output.instance.label == "edgecache-fra-1" && output.firewall.label == "edgecache-fra-1"
    error_message = "instance and firewall labels must be edgecache-<name>"
  }

  assert {
    condition     = output.mesh_hostname == "edgecache-fra-1"
    error_message = "mesh host name must be edgecache-<name>"
  }

  assert {
    condition     = output.tags == tolist(["edgecache", "edgecache-pop", "pop-fra-1", "region-eu-central"])
    error_message = "every PoP must carry the edgecache, edgecache-pop, pop-<name> and region-<region> tags"
  }

  assert {
    condition     = output.instance.tags == output.tags && output.instance.region == "eu-central" && output.instance.type == "g6-standard-1"
    error_message = "instance arguments must come straight from the inputs"
  }
}

run "dns_record_under_the_pop_subdomain" {
  command = plan

  assert {
    condition     = output.dns.record_name == "fra-1.pops" && output.dns.fqdn == "fra-1.pops.example.social" && output.dns.ttl == 300
    error_message = "the PoP record must be <name>.pops.<zone> with a 300 s TTL by default"
  }
}

run "dns_record_directly_under_the_zone" {
  command = plan

  variables {
    pop_record_subdomain = ""
  }

  assert {
    condition     = output.dns.record_name == "fra-1" && output.dns.fqdn == "fra-1.example.social"
    error_message = "with an empty subdomain the PoP record must be <name>.<zone>"
  }
}

run "extra_tags_are_added_once" {
  command = plan

  variables {
    extra_tags = ["env-prod", "edgecache"]
  }

  assert {
    condition     = output.tags == tolist(["edgecache", "edgecache-pop", "pop-fra-1", "region-eu-central", "env-prod"])
    error_message = "extra tags must be appended without duplicates"
  }
}

run "firewall_opens_web_ports_to_everyone_and_admin_only_to_the_mesh" {
  command = plan

  variables {
    operator_ssh_cidrs = ["203.0.113.7/32", "2001:db8::/64"]
  }

  assert {
    condition = alltrue([
      for port in ["80", "443"] : anytrue([
        for rule in output.firewall.inbound_rules :
        rule.protocol == "TCP" && rule.ports == port && rule.action == "ACCEPT" && rule.ipv4 == ["0.0.0.0/0"] && rule.ipv6 == ["::/0"]
      ])
    ])
    error_message = "TCP 80 and 443 must be open to all IPv4 and IPv6 addresses"
  }

  assert {
    condition = [
      for rule in output.firewall.inbound_rules : { ipv4 = rule.ipv4, ipv6 = rule.ipv6 }
      if rule.ports == "9901"
    ] == [{ ipv4 = ["100.64.0.0/10"], ipv6 = ["fd7a:115c:a1e0::/48"] }]
    error_message = "the admin port must have exactly one rule, open only to the Tailscale ranges"
  }

  assert {
    condition = [
      for rule in output.firewall.inbound_rules : rule.label if rule.ports == "22"
    ] == ["ssh-from-mesh", "ssh-from-operators"]
    error_message = "SSH must be open to the mesh and the operators only"
  }

  assert {
    condition = [
      for rule in output.firewall.inbound_rules : { ipv4 = rule.ipv4, ipv6 = rule.ipv6 }
      if rule.label == "ssh-from-operators"
    ] == [{ ipv4 = ["203.0.113.7/32"], ipv6 = ["2001:db8::/64"] }]
    error_message = "operator ranges must be split into their IPv4 and IPv6 lists"
  }

  assert {
    condition = alltrue([
      for rule in output.firewall.inbound_rules :
      contains(rule.ipv4, "0.0.0.0/0") || contains(rule.ipv6, "::/0") ? contains(["80", "443", "41641"], coalesce(rule.ports, "icmp")) || rule.protocol == "ICMP" : true
    ])
    error_message = "only 80, 443, the Tailscale UDP port and ICMP may be open to the internet"
  }

  assert {
    condition     = alltrue([for rule in output.firewall.inbound_rules : length(rule.label) >= 3 && length(rule.label) <= 32])
    error_message = "Linode firewall rule labels must be 3 to 32 characters"
  }
}

run "custom_admin_port_and_no_tailscale_direct" {
  command = plan

  variables {
    admin_port             = 9443
    allow_tailscale_direct = false
  }

  assert {
    condition     = [for rule in output.firewall.inbound_rules : rule.label if rule.ports == "9443"] == ["admin-from-mesh"]
    error_message = "the admin rule must follow admin_port"
  }

  assert {
    condition     = !anytrue([for rule in output.firewall.inbound_rules : rule.protocol == "UDP"])
    error_message = "no UDP port may be open when allow_tailscale_direct is false"
  }

  assert {
    condition     = !anytrue([for rule in output.firewall.inbound_rules : rule.label == "ssh-from-operators"])
    error_message = "without operator ranges SSH must be reachable only over the mesh"
  }
}

run "a_shield_opens_its_port_to_the_mesh_only" {
  command = plan

  variables {
    shield_port = 9902
  }

  assert {
    condition = [
      for rule in output.firewall.inbound_rules : { label = rule.label, ipv4 = rule.ipv4, ipv6 = rule.ipv6 }
      if rule.ports == "9902"
    ] == [{ label = "shield-from-mesh", ipv4 = ["100.64.0.0/10"], ipv6 = ["fd7a:115c:a1e0::/48"] }]
    error_message = "a shield's port must have exactly one rule, open only to the Tailscale ranges"
  }
}

run "no_shield_port_without_a_shield" {
  command = plan

  assert {
    condition     = !anytrue([for rule in output.firewall.inbound_rules : rule.label == "shield-from-mesh"])
    error_message = "a PoP that is no shield must not open a shield port"
  }
}

run "rejects_a_shield_port_on_the_admin_port" {
  command = plan

  variables {
    shield_port = 9901
  }

  expect_failures = [var.shield_port]
}

run "tailscale_direct_port_is_udp_from_anywhere" {
  command = plan

  assert {
    condition = [
      for rule in output.firewall.inbound_rules : [rule.protocol, rule.ports] if rule.label == "tailscale-direct"
    ] == [["UDP", "41641"]]
    error_message = "Tailscale direct connections need UDP 41641 open"
  }
}

run "rejects_a_bad_pop_name" {
  command = plan

  variables {
    name = "Fra_1"
  }

  expect_failures = [var.name]
}

run "rejects_a_name_too_long_for_linode_labels" {
  command = plan

  variables {
    name = "a-very-long-pop-name-123"
  }

  expect_failures = [var.name]
}

run "rejects_a_bad_region" {
  command = plan

  variables {
    region = "Frankfurt"
  }

  expect_failures = [var.region]
}

run "rejects_a_non_linode_instance_type" {
  command = plan

  variables {
    instance_type = "t3.micro"
  }

  expect_failures = [var.instance_type]
}

run "rejects_an_admin_port_open_to_the_internet" {
  command = plan

  variables {
    mesh_cidrs = ["100.64.0.0/10", "0.0.0.0/0"]
  }

  expect_failures = [var.mesh_cidrs]
}

run "rejects_a_malformed_mesh_cidr" {
  command = plan

  variables {
    mesh_cidrs = ["100.64.0.0/33"]
  }

  expect_failures = [var.mesh_cidrs]
}

run "rejects_ssh_open_to_the_internet" {
  command = plan

  variables {
    operator_ssh_cidrs = ["::/0"]
  }

  expect_failures = [var.operator_ssh_cidrs]
}

run "rejects_the_admin_port_on_a_public_port" {
  command = plan

  variables {
    admin_port = 443
  }

  expect_failures = [var.admin_port]
}

run "rejects_a_ttl_linode_would_round" {
  command = plan

  variables {
    dns_ttl = 600
  }

  expect_failures = [var.dns_ttl]
}

run "rejects_missing_ssh_keys" {
  command = plan

  variables {
    authorized_keys = []
  }

  expect_failures = [var.authorized_keys]
}

run "rejects_a_too_short_tag" {
  command = plan

  variables {
    extra_tags = ["x"]
  }

  expect_failures = [var.extra_tags]
}
