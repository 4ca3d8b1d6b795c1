module "fleet" {
  source = "../../modules/fleet_plan"

  pops                  = var.pops
  default_instance_type = var.default_instance_type
  extra_tags            = var.extra_tags
}

data "linode_domain" "zone" {
  domain = var.dns_zone
}

module "pop" {
  source   = "../../modules/pop"
  for_each = module.fleet.pops

  name                 = each.value.name
  region               = each.value.region
  instance_type        = each.value.instance_type
  extra_tags           = each.value.extra_tags
  image                = var.image
  authorized_keys      = var.authorized_keys
  dns_zone             = var.dns_zone
  dns_zone_id          = data.linode_domain.zone.id
  pop_record_subdomain = var.pop_record_subdomain
  mesh_cidrs           = var.mesh_cidrs
  operator_ssh_cidrs   = var.operator_ssh_cidrs
  admin_port           = var.admin_port
  shield_port          = each.value.shield ? var.shield_port : null
}

module "inventory" {
  source = "../../modules/inventory"

  connect_via = var.inventory_connect_via
  pops = {
    for name, pop in module.pop : name => {
      region        = pop.region
      public_ipv4   = pop.public_ipv4
      public_ipv6   = pop.public_ipv6
      mesh_hostname = pop.mesh_hostname
      fqdn          = pop.fqdn
      shield        = module.fleet.pops[name].shield
    }
  }
}
