output "yaml" {
  description = "The Ansible inventory in YAML: every PoP in the group edgecache_pops, with its host variables."
  value       = yamlencode(local.inventory)
}

output "hosts" {
  description = "The same PoPs as a list sorted by name, each with its host variables and name."
  value       = [for name in sort(keys(local.hosts)) : merge(local.hosts[name], { name = name })]
}
