variable "pops" {
  description = "The fleet: PoP name (e.g. \"fra-1\") => its Linode region and, optionally, plan, extra tags and `shield = true` (the PoP near the core that the others ask before it). One entry per PoP; adding a region is adding an entry."
  type = map(object({
    region        = string
    instance_type = optional(string)
    extra_tags    = optional(list(string), [])
    shield        = optional(bool, false)
  }))
}

variable "default_instance_type" {
  description = "The Linode plan for PoPs that do not name their own."
  type        = string
  default     = "g6-standard-1"
}

variable "image" {
  description = "The image every PoP is installed from; Ansible configures it afterwards."
  type        = string
  default     = "linode/debian12"
}

variable "authorized_keys" {
  description = "SSH public keys put on every PoP's root account; Ansible logs in with one of them."
  type        = list(string)
}

variable "dns_zone" {
  description = "The zone, hosted in Linode DNS, that holds one record per PoP, e.g. \"example.social\"."
  type        = string
}

variable "pop_record_subdomain" {
  description = "The label under dns_zone holding the per-PoP records: with \"pops\", PoP fra-1 is fra-1.pops.<dns_zone>."
  type        = string
  default     = "pops"
}

variable "geo_hostname" {
  description = "The public, geo-routed name clients use (e.g. \"media.example.social\"). It is served by a geo DNS service, not by this configuration; the geo_dns_pool output lists what its pool must hold."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.geo_hostname))
    error_message = "geo_hostname must be a lowercase domain name without a trailing dot."
  }
}

variable "mesh_cidrs" {
  description = "Address ranges of the mesh; only these reach the admin port. Defaults to Tailscale's ranges."
  type        = list(string)
  default     = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"]
}

variable "operator_ssh_cidrs" {
  description = "Address ranges that may reach SSH over the public interface, for the first Ansible run before a PoP is on the mesh."
  type        = list(string)
  default     = []
}

variable "admin_port" {
  description = "TCP port of edgecache's admin listener on every PoP."
  type        = number
  default     = 9901
}

variable "shield_port" {
  description = "TCP port of edgecache's shield listener on the PoPs marked shield, reachable only from mesh_cidrs."
  type        = number
  default     = 9902
}

variable "extra_tags" {
  description = "Tags added to every PoP's Linode resources."
  type        = list(string)
  default     = []
}

variable "inventory_connect_via" {
  description = "How the Ansible inventory reaches the PoPs: \"public\" (public IPv4, through operator_ssh_cidrs) or \"mesh\" (mesh host names, once the PoPs have joined)."
  type        = string
  default     = "public"
}
