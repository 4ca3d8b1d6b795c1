output "ansible_inventory" {
  description = "Ansible inventory (YAML) of every PoP: terraform output -raw ansible_inventory > ansible/inventory/fleet.yml"
  value       = module.inventory.yaml
}

output "pops" {
  description = "Every PoP with its Ansible host variables, sorted by name."
  value       = module.inventory.hosts
}

output "geo_dns_pool" {
  description = "What the geo DNS service must serve for geo_hostname: for each region, the per-PoP names (CNAME targets) of its PoPs."
  value = {
    hostname = var.geo_hostname
    regions = {
      for region in module.fleet.regions : region => sort([
        for pop in module.pop : pop.fqdn if pop.region == region
      ])
    }
  }
}
