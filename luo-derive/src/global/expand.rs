// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 4 of the global-state attributes: the ABI trait impls of each form, the FLB's and
//! the subsystem's ops table and raw struct, and their trampolines into the luo_abi runtime.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::LitStr;

use crate::common;

use super::model::Model;
use super::Form;

/// The expansion of valid arguments.
pub fn generate(form: Form, m: &Model) -> TokenStream {
    body(form, m, true)
}

/// On errors: the trait impls with the types that could be parsed, without the ops tables
/// (never registered: the crate does not compile), so the impl and the handlers linking the
/// global do not produce follow-on errors. Nothing without an ABI type.
pub fn fallback(form: Form, m: &Model) -> TokenStream {
    body(form, m, false)
}

fn body(form: Form, m: &Model, ok: bool) -> TokenStream {
    if m.abi.is_none() {
        return quote!();
    }
    match form {
        Form::Flb => flb(m, ok),
        Form::State => state(m),
        Form::Subsystem => subsystem(m, ok),
    }
}

/// `decode`: the reserved-field check of the ABI type.
fn decode_fn() -> TokenStream {
    let v = common::validate(quote!(ser));
    quote! {
        fn decode(ser: Self::Ser) -> ::luo_abi::Result<Self::Ser> {
            #v
            ::core::result::Result::Ok(ser)
        }
    }
}

/// An FLB: `Global`, `FlbAbi`, and (`ok`) its `liveupdate_flb_ops` table.
fn flb(m: &Model, ok: bool) -> TokenStream {
    let ident = &m.ident;
    let abi = &m.abi;
    let immediate = m.immediate;
    // An immediate FLB's ABI type is the data word itself.
    let size_check = match (&m.abi, immediate) {
        (Some(abi), true) => quote_spanned! {abi.span()=>
            const _: () = ::core::assert!(
                ::core::mem::size_of::<#abi>() == 8,
                "an `immediate` FLB hands over its data word itself: `abi` must be an 8-byte type such as u64",
            );
        },
        _ => quote!(),
    };
    let lock = common::lock_path(&m.lock);
    let compat = m.name.as_ref().map_or(String::new(), LitStr::value);
    let decode = decode_fn();
    let raw = if ok {
        quote! {
            __lu::liveupdate_flb {
                ops: &__LUO_FLB_OPS,
                compatible: ::luo_abi::abi::compat_bytes(#compat),
            }
        }
    } else {
        quote!(::core::unreachable!())
    };
    let table = if ok {
        quote! {
            const __LUO_FLB_OPS: __lu::liveupdate_flb_ops = __lu::liveupdate_flb_ops {
                preserve: ::core::option::Option::Some(__luo_flb_preserve),
                unpreserve: ::core::option::Option::Some(__luo_flb_unpreserve),
                retrieve: ::core::option::Option::Some(__luo_flb_retrieve),
                finish: ::core::option::Option::Some(__luo_flb_finish),
                owner: ::core::ptr::null_mut(),
            };
            unsafe extern "C" fn __luo_flb_preserve(argp: *mut __lu::liveupdate_flb_op_args) -> ::core::ffi::c_int {
                // SAFETY: the core passes valid op args for this FLB's cell.
                unsafe {
                    let a = &mut *argp;
                    ::luo_abi::global::rt::flb_preserve::<#ident>(a.flb.cast(), &mut a.data, &mut a.obj)
                }
            }
            unsafe extern "C" fn __luo_flb_unpreserve(argp: *mut __lu::liveupdate_flb_op_args) {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &*argp;
                    ::luo_abi::global::rt::flb_unpreserve::<#ident>(a.flb.cast(), a.data)
                }
            }
            unsafe extern "C" fn __luo_flb_retrieve(argp: *mut __lu::liveupdate_flb_op_args) -> ::core::ffi::c_int {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &mut *argp;
                    ::luo_abi::global::rt::flb_retrieve::<#ident>(a.flb.cast(), a.data, &mut a.obj)
                }
            }
            unsafe extern "C" fn __luo_flb_finish(argp: *mut __lu::liveupdate_flb_op_args) {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &*argp;
                    ::luo_abi::global::rt::flb_finish::<#ident>(a.flb.cast())
                }
            }
        }
    } else {
        quote!()
    };
    quote! {
        const _: () = {
            use ::luo_generated::liveupdate as __lu;

            impl ::luo_abi::global::Global for #ident {
                type Cell = ::luo_abi::global::FlbCell<#ident>;
                const FORM: ::luo_abi::global::GlobalStateForm = ::luo_abi::global::GlobalStateForm::Flb;
            }

            // SAFETY: `raw` is the generated struct over the ops table below, whose
            // trampolines call the luo_abi runtime for this type.
            unsafe impl ::luo_abi::global::FlbAbi for #ident {
                type Ser = #abi;
                type Raw = __lu::liveupdate_flb;
                type Lock = #lock;
                const COMPATIBLE: &'static str = #compat;
                const IMMEDIATE: bool = #immediate;
                fn raw() -> Self::Raw {
                    #raw
                }
                #decode
            }
            #size_check
            #table
        };
    }
}

/// Handler-scoped state: `HandlerStateAbi` (its ops table is the declaring handler's).
fn state(m: &Model) -> TokenStream {
    let ident = &m.ident;
    let abi = &m.abi;
    let lock = common::lock_path(&m.lock);
    let decode = decode_fn();
    quote! {
        const _: () = {
            // SAFETY: the ops table is built by #[liveupdate_handler] of the handler that
            // declares this state, over the luo_abi runtime.
            unsafe impl ::luo_abi::global::HandlerStateAbi for #ident {
                type Ser = #abi;
                type Lock = #lock;
                #decode
            }
            // SAFETY: declared with #[liveupdate_global_state].
            unsafe impl ::luo_abi::global::DeclaredState for #ident {}
        };
    }
}

/// A subsystem: `Global`, `SubsystemAbi`, and (`ok`) its `liveupdate_subsystem_ops` table.
fn subsystem(m: &Model, ok: bool) -> TokenStream {
    let ident = &m.ident;
    let abi = &m.abi;
    let lock = common::lock_path(&m.lock);
    let name = m.name.as_ref().map_or(String::new(), LitStr::value);
    let cname = format!("{name}\0");
    let decode = decode_fn();
    let raw = if ok {
        quote! {
            __lu::liveupdate_subsystem {
                ops: &__LUO_SUBSYSTEM_OPS,
                name: #cname.as_ptr(),
            }
        }
    } else {
        quote!(::core::unreachable!())
    };
    let table = if ok {
        quote! {
            const __LUO_SUBSYSTEM_OPS: __lu::liveupdate_subsystem_ops = __lu::liveupdate_subsystem_ops {
                prepare: ::core::option::Option::Some(__luo_sub_prepare),
                freeze: if <#ident as ::luo_abi::global::Subsystem>::HAS_FREEZE {
                    ::core::option::Option::Some(__luo_sub_freeze)
                } else {
                    ::core::option::Option::None
                },
                cancel: ::core::option::Option::Some(__luo_sub_cancel),
                boot: ::core::option::Option::Some(__luo_sub_boot),
                finish: ::core::option::Option::Some(__luo_sub_finish),
                owner: ::core::ptr::null_mut(),
            };
            unsafe extern "C" fn __luo_sub_prepare(handle: *mut __lu::liveupdate_subsystem, data: *mut u64) -> ::core::ffi::c_int {
                // SAFETY: the core passes this subsystem's cell and a valid out-pointer.
                unsafe { ::luo_abi::global::rt::sub_prepare::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_freeze(handle: *mut __lu::liveupdate_subsystem, data: *mut u64) -> ::core::ffi::c_int {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_freeze::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_cancel(handle: *mut __lu::liveupdate_subsystem, data: u64) {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_cancel::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_boot(handle: *mut __lu::liveupdate_subsystem, data: u64) {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_boot::<#ident>(handle.cast(), data) }
            }
            unsafe extern "C" fn __luo_sub_finish(handle: *mut __lu::liveupdate_subsystem, data: u64) {
                // SAFETY: as for prepare.
                unsafe { ::luo_abi::global::rt::sub_finish::<#ident>(handle.cast(), data) }
            }
        }
    } else {
        quote!()
    };
    quote! {
        const _: () = {
            use ::luo_generated::liveupdate as __lu;

            impl ::luo_abi::global::Global for #ident {
                type Cell = ::luo_abi::global::SubsystemCell<#ident>;
                const FORM: ::luo_abi::global::GlobalStateForm = ::luo_abi::global::GlobalStateForm::Subsystem;
            }

            // SAFETY: `raw` is the generated struct over the ops table below, whose
            // trampolines call the luo_abi runtime for this type.
            unsafe impl ::luo_abi::global::SubsystemAbi for #ident {
                type Ser = #abi;
                type Raw = __lu::liveupdate_subsystem;
                type Lock = #lock;
                const NAME: &'static str = #name;
                fn raw() -> Self::Raw {
                    #raw
                }
                #decode
            }
            #table
        };
    }
}
