output "pops" {
  description = "Each PoP with the fleet defaults filled in, keyed by its name: the for_each of the pop module."
  value       = local.pops
}

output "shields" {
  description = "The PoPs marked as shields, sorted: the others name them in their sites."
  value       = local.shields
}

output "regions" {
  description = "The Linode regions the fleet runs in, sorted."
  value       = local.regions
}
