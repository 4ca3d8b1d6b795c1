variables {
  pops = {
    fra-1 = { region = "eu-central" }
    fra-2 = { region = "eu-central", instance_type = "g6-dedicated-2" }
    ord-1 = { region = "us-ord", extra_tags = ["env-canary"] }
  }
  extra_tags = ["env-prod"]
}

run "fills_in_fleet_defaults" {
  command = plan

  assert {
    condition     = output.pops["fra-1"].instance_type == "g6-standard-1" && output.pops["fra-2"].instance_type == "g6-dedicated-2"
    error_message = "a PoP without its own plan must get default_instance_type"
  }

  assert {
    condition     = output.pops["ord-1"].extra_tags == tolist(["env-prod", "env-canary"]) && output.pops["fra-1"].extra_tags == tolist(["env-prod"])
    error_message = "fleet tags must come first, then the PoP's own"
  }

  assert {
    condition     = output.pops["ord-1"].name == "ord-1" && output.pops["ord-1"].region == "us-ord"
    error_message = "each PoP must carry its name and region"
  }
}

run "lists_each_region_once" {
  command = plan

  assert {
    condition     = output.regions == tolist(["eu-central", "us-ord"])
    error_message = "regions must be the sorted distinct regions of the PoPs"
  }
}

run "adding_a_region_is_one_entry" {
  command = plan

  variables {
    pops = {
      fra-1 = { region = "eu-central" }
      sin-1 = { region = "sg-sin-2" }
    }
  }

  assert {
    condition     = sort(keys(output.pops)) == sort(["fra-1", "sin-1"]) && output.pops["sin-1"].region == "sg-sin-2"
    error_message = "a new map entry must become a new PoP"
  }
}

run "rejects_an_empty_fleet" {
  command = plan

  variables {
    pops = {}
  }

  expect_failures = [var.pops]
}

run "rejects_a_bad_pop_name" {
  command = plan

  variables {
    pops = { "FRA 1" = { region = "eu-central" } }
  }

  expect_failures = [var.pops]
}

run "rejects_a_bad_region" {
  command = plan

  variables {
    pops = { fra-1 = { region = "frankfurt" } }
  }

  expect_failures = [var.pops]
}

run "rejects_a_bad_instance_type" {
  command = plan

  variables {
    pops = { fra-1 = { region = "eu-central", instance_type = "large" } }
  }

  expect_failures = [var.pops]
}

run "rejects_a_bad_default_instance_type" {
  command = plan

  variables {
    default_instance_type = "m5.large"
  }

  expect_failures = [var.default_instance_type]
}

run "marks_the_shields" {
  command = plan

  variables {
    pops = {
      fra-1 = { region = "eu-central", shield = true }
      ord-1 = { region = "us-ord" }
      sin-1 = { region = "sg-sin-2" }
    }
  }

  assert {
    condition     = output.shields == tolist(["fra-1"])
    error_message = "shields must list the PoPs marked shield"
  }

  assert {
    condition     = output.pops["fra-1"].shield && !output.pops["ord-1"].shield
    error_message = "each PoP must say whether it is a shield, false unless marked"
  }
}
