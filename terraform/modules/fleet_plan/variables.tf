variable "pops" {
  description = "The fleet: one entry per PoP, keyed by its fleet name (e.g. \"fra-1\"), with the Linode region it runs in and, optionally, its own plan, extra tags and `shield = true` for a PoP the others ask before the core (one near the core). Adding a region is adding an entry."
  type = map(object({
    region        = string
    instance_type = optional(string)
    extra_tags    = optional(list(string), [])
    shield        = optional(bool, false)
  }))

  validation {
    condition     = length(var.pops) > 0
    error_message = "pops must hold at least one PoP."
  }

  validation {
    condition     = alltrue([for name in keys(var.pops) : can(regex("^[a-z][a-z0-9-]{0,20}[a-z0-9]$", name)) && !strcontains(name, "--")])
    error_message = "Each key of pops is a PoP name: 2-22 characters of lowercase letters, digits and single hyphens, starting with a letter (e.g. \"fra-1\")."
  }

  validation {
    condition     = alltrue([for pop in values(var.pops) : can(regex("^[a-z]{2}-[a-z]+(-[0-9]+)?$", pop.region))])
    error_message = "Each PoP's region must be a Linode region id such as \"eu-central\", \"us-ord\" or \"de-fra-2\"."
  }

  validation {
    condition     = alltrue([for pop in values(var.pops) : pop.instance_type == null || can(regex("^g[0-9]+-(nanode|standard|dedicated|highmem|premium)-[0-9]+$", pop.instance_type))])
    error_message = "A PoP's instance_type, when set, must be a Linode plan id such as \"g6-standard-2\"."
  }
}

variable "default_instance_type" {
  description = "The Linode plan for PoPs that do not name their own."
  type        = string
  default     = "g6-standard-1"

  validation {
    condition     = can(regex("^g[0-9]+-(nanode|standard|dedicated|highmem|premium)-[0-9]+$", var.default_instance_type))
    error_message = "default_instance_type must be a Linode plan id such as \"g6-standard-1\"."
  }
}

variable "extra_tags" {
  description = "Tags added to every PoP of the fleet, before each PoP's own extra_tags."
  type        = list(string)
  default     = []
}
